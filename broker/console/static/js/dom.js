// Building the page. Every string that came from an admin or an agent (pool, server,
// encoder and admin names) reaches the page as text (el() and add() make text nodes, say()
// sets textContent) or as an attribute value set by el(): never as markup.

export const main = document.getElementById('main');
export const topbar = document.getElementById('topbar');
const flash = document.getElementById('flash');

let idSeq = 0;
export const uid = (prefix) => `${prefix}-${++idSeq}`;

/** Build an element. Strings among the children become text nodes (never markup). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'on') for (const [type, fn] of Object.entries(value)) node.addEventListener(type, fn);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  add(node, children);
  return node;
}

export function add(node, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const h1 = (text) => el('h1', { tabindex: '-1' }, text);

export function section(title, ...children) {
  const id = uid('s');
  return el('section', { 'aria-labelledby': id }, el('h2', { id }, title), children);
}

export function field(label, input, hint) {
  if (!input.id) input.id = uid('f');
  let hintNode = null;
  if (hint) {
    hintNode = el('p', { class: 'hint', id: uid('h') }, hint);
    input.setAttribute('aria-describedby', hintNode.id);
  }
  return el('div', { class: 'field' }, el('label', { for: input.id }, label), input, hintNode);
}

export function table(caption, headers, rows, empty) {
  if (!rows.length) return el('p', { class: 'empty' }, empty);
  return el('div', { class: 'table-wrap' }, el('table', {},
    caption ? el('caption', { class: 'visually-hidden' }, caption) : null,
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows.map((cells) => el('tr', {}, cells.map((c, i) => (
      i === 0 ? el('th', { scope: 'row' }, c) : el('td', {}, c))))))));
}

export function errorBox() {
  return el('div', { class: 'error', role: 'alert', hidden: true });
}

/**
 * Show ``err`` in ``box`` once. A refused move (its ``items``, one per sales order) or a
 * request with several invalid fields is written out from the list alone: the broker's
 * ``detail`` repeats the first item, so showing both would say it twice.
 */
export function showError(box, err) {
  box.replaceChildren();
  box.hidden = false;
  const problem = err.problem || {};
  if (Array.isArray(problem.items) && problem.items.length && problem.items[0].sales_order !== undefined) {
    add(box, lacking(problem.items));
  } else if (Array.isArray(problem.errors) && problem.errors.length > 1) {
    add(box, [el('p', {}, 'Check these and try again:'),
      el('ul', {}, problem.errors.map((e) => el('li', {}, e.field ? `${e.field}: ${e.message}` : e.message)))]);
  } else {
    add(box, el('p', {}, err.message));
  }
}

function lacking(items) {
  const short = (i) => (i.unused
    ? `has only ${i.unused} unused ${i.unused === 1 ? 'licence' : 'licences'} to move; ${i.requested} ${i.requested === 1 ? 'was' : 'were'} asked for`
    : `has no unused licences to move; ${i.requested} ${i.requested === 1 ? 'was' : 'were'} asked for`);
  if (items.length === 1) return el('p', {}, `Sales order ${items[0].sales_order} ${short(items[0])}. Nothing was moved.`);
  return [el('p', {}, 'Not enough unused licences; nothing was moved:'),
    el('ul', {}, items.map((i) => el('li', {}, `Sales order ${i.sales_order} ${short(i)}.`)))];
}

export function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}

/** Announce ``message`` through the live region (an empty one clears it). */
export function say(message) {
  flash.textContent = message || '';
}

/** Disable a form's controls while ``work`` runs, then re-enable them. */
export async function busy(form, work) {
  const controls = [...form.querySelectorAll('button, input, select')].filter((c) => !c.disabled);
  controls.forEach((c) => { c.disabled = true; });
  form.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    controls.forEach((c) => { c.disabled = false; });
    form.removeAttribute('aria-busy');
  }
}

export function confirmDialog(title, message, confirmLabel) {
  return new Promise((resolve) => {
    const titleId = uid('dlg');
    let answered = false;
    const finish = (value) => {
      if (answered) return;
      answered = true;
      if (dialog.open) dialog.close();
      dialog.remove();
      resolve(value);
    };
    const dialog = el('dialog', { class: 'confirm', 'aria-labelledby': titleId },
      el('h2', { id: titleId }, title),
      el('p', {}, message),
      el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'danger', on: { click: () => finish(true) } }, confirmLabel),
        el('button', { type: 'button', autofocus: true, on: { click: () => finish(false) } }, 'Cancel')));
    dialog.addEventListener('close', () => finish(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}

export async function copyText(text, source) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (plain http on a non-local address): select it for Ctrl+C.
    const selection = window.getSelection();
    selection.selectAllChildren(source);
    if (!document.execCommand('copy')) {
      say('Selected: press Ctrl+C to copy.');
      return;
    }
  }
  say('Copied.');
}
