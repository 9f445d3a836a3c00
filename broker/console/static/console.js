// Tenure admin console: one ES module, no dependencies, no build step.
//
// It calls the broker's /v1 JSON API with the session cookie that /console/session hands
// out, and sends the session's CSRF token in X-CSRF-Token on every state-changing request.
// Every string that came from an admin or an agent (pool, server, encoder and admin names)
// reaches the page through text nodes or attributes set by el() below: never as markup.

const main = document.getElementById('main');
const topbar = document.getElementById('topbar');
const flash = document.getElementById('flash');

const state = {
  csrf: null, // the session's CSRF token, kept in memory only
  me: null, // GET /v1/me: estate_id, estate_name, admin_id, name, primary
  brokerUrl: null, // the broker's configured public_url, if any
  lastCode: null, // the code just made: shown once, never put in the URL
  pendingMessage: null, // what to announce on the page being opened
  nav: 0, // bumps on each navigation, so that a slow page does not overwrite a newer one
};

const EVENT_KINDS = [
  ['pool.created', 'Pool created'],
  ['pool.updated', 'Pool renamed or lease lifetime changed'],
  ['pool.deleted', 'Pool deleted'],
  ['licences.moved', 'Licences moved'],
  ['auth_code.created', 'Authentication code made'],
  ['auth_code.revoked', 'Authentication code revoked'],
  ['server.enrolled', 'Server or domain authenticated'],
  ['server.rebound', 'Server or domain moved to another pool'],
  ['server.removed', 'Server or domain removed'],
  ['lease.granted', 'Lease granted'],
  ['lease.changed', 'Lease changed'],
  ['lease.released', 'Lease released by its agent'],
  ['lease.revoked', 'Lease force-released'],
  ['lease.lapsed', 'Lease lapsed'],
  ['lease.renewal_refused', 'Lease renewal refused'],
  ['purchase.recorded', 'Purchase recorded'],
  ['purchase.updated', 'Purchase changed (hold, expiry)'],
  ['admin.added', 'Admin invited'],
  ['admin.removed', 'Admin removed'],
  ['estate.created', 'Estate created'],
];

// ---------------------------------------------------------------- DOM helpers

let idSeq = 0;
const uid = (prefix) => `${prefix}-${++idSeq}`;

/** Build an element. Strings among the children become text nodes (never markup). */
function el(tag, props = {}, ...children) {
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

function add(node, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const h1 = (text) => el('h1', { tabindex: '-1' }, text);

function section(title, ...children) {
  const id = uid('s');
  return el('section', { 'aria-labelledby': id }, el('h2', { id }, title), children);
}

function field(label, input, hint) {
  if (!input.id) input.id = uid('f');
  let hintNode = null;
  if (hint) {
    hintNode = el('p', { class: 'hint', id: uid('h') }, hint);
    input.setAttribute('aria-describedby', hintNode.id);
  }
  return el('div', { class: 'field' }, el('label', { for: input.id }, label), input, hintNode);
}

function table(caption, headers, rows, empty) {
  if (!rows.length) return el('p', { class: 'empty' }, empty);
  return el('div', { class: 'table-wrap' }, el('table', {},
    caption ? el('caption', { class: 'visually-hidden' }, caption) : null,
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows.map((cells) => el('tr', {}, cells.map((c, i) => (
      i === 0 ? el('th', { scope: 'row' }, c) : el('td', {}, c))))))));
}

function errorBox() {
  return el('div', { class: 'error', role: 'alert', hidden: true });
}

function showError(box, err) {
  box.replaceChildren();
  box.hidden = false;
  add(box, el('p', {}, err.message));
  const problem = err.problem || {};
  if (Array.isArray(problem.items) && problem.items.length) {
    box.append(el('ul', {}, problem.items.map((i) => el('li', {},
      `Sales order ${i.sales_order}: ${i.requested} asked for, ${i.unused} unused (${i.lacking} short).`))));
  } else if (Array.isArray(problem.errors) && problem.errors.length > 1) {
    box.append(el('ul', {}, problem.errors.map((e) => el('li', {}, e.field ? `${e.field}: ${e.message}` : e.message))));
  }
}

function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}

function say(message) {
  flash.textContent = message || '';
}

/** Disable a form's controls while ``work`` runs, then re-enable them. */
async function busy(form, work) {
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

function confirmDialog(title, message, confirmLabel) {
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

async function copyText(text, source) {
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

// ---------------------------------------------------------------- formats

const fmtTime = (ts) => (ts ? `${ts.slice(0, 10)} ${ts.slice(11, 16)} UTC` : 'never');
const fmtDate = (ts) => ts.slice(0, 10);

function duration(seconds) {
  const s = Math.abs(Math.round(seconds));
  if (s >= 86400 && s % 86400 === 0) return `${s / 86400} d`;
  if (s >= 3600 && s % 3600 === 0) return `${s / 3600} h`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  if (s >= 60 && s % 60 === 0) return `${s / 60} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${s} s`;
}

function fromNow(ts) {
  const seconds = (Date.parse(ts) - Date.now()) / 1000;
  if (Math.abs(seconds) < 5) return 'just now';
  const rounded = Math.abs(seconds) >= 120 ? Math.round(seconds / 60) * 60 : Math.round(seconds);
  return seconds >= 0 ? `in ${duration(rounded)}` : `${duration(rounded)} ago`;
}

const counts = (c) => `${c.allocated} allocated / ${c.in_use} in use / ${c.available} available`;
const groupCode = (code) => `${code.slice(0, 4)} ${code.slice(4)}`;

function stateBadge(item) {
  const grace = item.grace_ends_at ? ` — grace ends ${fmtDate(item.grace_ends_at)}` : '';
  const text = {
    valid: 'Valid',
    expiring: `Expiring ${fmtDate(item.expires_at)}`,
    expired: `Expired${grace}`,
    ended: 'Ended (grace over)',
    on_hold: `On hold${grace}`,
  }[item.state] || item.state;
  const tone = { valid: 'ok', expiring: 'warn' }[item.state] || 'bad';
  return el('span', { class: `badge badge-${tone}` }, text);
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `The broker answered ${status}.`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, { detail: 'The broker cannot be reached; check the connection and try again.' });
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** An API call in a signed-in page: a 401 means the session is over. */
async function api(method, path, body) {
  try {
    return await call(method, path, body);
  } catch (err) {
    if (err.status === 401 && state.me) sessionEnded(err.message);
    throw err;
  }
}

const E = (rest = '') => `/v1/estates/${encodeURIComponent(state.me.estate_id)}${rest}`;
const P = (id, rest = '') => E(`/pools/${encodeURIComponent(id)}${rest}`);

// ---------------------------------------------------------------- session

async function boot() {
  document.getElementById('skip-link').addEventListener('click', (ev) => {
    ev.preventDefault();
    main.focus();
  });
  window.addEventListener('hashchange', () => route());
  try {
    const session = await call('GET', '/console/session');
    await begin(session);
  } catch {
    showSignIn();
  }
}

async function begin(session) {
  state.csrf = session.csrf_token;
  state.brokerUrl = session.broker_url;
  const me = await call('GET', '/v1/me');
  if (me.kind !== 'admin') throw new ApiError(403, { detail: 'The console is for estate admins.' });
  state.me = me;
  renderTopbar();
  await route();
}

function sessionEnded(message) {
  state.me = null;
  state.csrf = null;
  showSignIn(message || 'Your session has ended; sign in again.');
}

function showSignIn(message) {
  state.nav += 1;
  topbar.hidden = true;
  topbar.replaceChildren();
  document.title = 'Sign in · Tenure console';
  const input = el('input', {
    type: 'text', name: 'admin-token', class: 'secret', autocomplete: 'off',
    autocapitalize: 'off', spellcheck: 'false', required: true,
  });
  const errors = errorBox();
  const form = el('form', { class: 'signin card', novalidate: true },
    h1('Sign in to the Tenure console'),
    message ? el('p', { class: 'notice' }, message) : null,
    field('Admin token', input, 'Your estate admin token (tnr_adm_…). The broker exchanges it for a session cookie; the page does not keep it.'),
    errors,
    el('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    const token = input.value.trim();
    if (!token) {
      showError(errors, new Error('Enter your admin token.'));
      input.focus();
      return;
    }
    try {
      const session = await busy(form, () => call('POST', '/console/session', { token }));
      input.value = '';
      say('');
      await begin(session);
    } catch (err) {
      showError(errors, err);
      input.focus();
    }
  });
  main.replaceChildren(form);
  main.querySelector('h1').focus();
}

async function signOut() {
  try {
    await call('DELETE', '/console/session');
  } catch (err) {
    if (err.status !== 401) {
      say(`Signing out failed: ${err.message}`);
      return;
    }
  }
  state.me = null;
  state.csrf = null;
  history.replaceState(null, '', '#/');
  showSignIn('You have signed out.');
}

function renderTopbar() {
  const links = [['#/', 'Estate'], ['#/pools', 'See all pools'], ['#/pools/new', 'Add pool'], ['#/audit', 'Audit log']];
  topbar.replaceChildren(
    el('p', { class: 'brand' }, 'Tenure', el('span', { class: 'estate-name' }, state.me.estate_name)),
    el('nav', { 'aria-label': 'Console' }, el('ul', {}, links.map(([href, text]) => el('li', {}, el('a', { href }, text))))),
    el('div', { class: 'who' },
      el('span', {}, `Signed in as ${state.me.name}`),
      el('button', { type: 'button', on: { click: signOut } }, 'Sign out')));
  topbar.hidden = false;
}

function markNav(hash) {
  const page = hash.split('?')[0];
  let current = page === '#/pools/new' || page === '#/' ? page : null;
  if (!current) current = page.startsWith('#/pools') ? '#/pools' : page.startsWith('#/audit') ? '#/audit' : null;
  for (const a of topbar.querySelectorAll('nav a')) {
    if (a.getAttribute('href') === current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

// ---------------------------------------------------------------- routing

const ROUTES = [
  [/^#\/$/, homePage],
  [/^#\/pools$/, poolsPage],
  [/^#\/pools\/new$/, addPoolPage],
  [/^#\/pools\/([A-Za-z0-9_-]+)$/, poolPage],
  [/^#\/pools\/([A-Za-z0-9_-]+)\/codes$/, codesPage],
  [/^#\/audit(?:\?(.*))?$/, auditPage],
];

async function route(announce) {
  if (!state.me) return;
  const message = announce || state.pendingMessage;
  state.pendingMessage = null;
  const hash = location.hash && location.hash !== '#' ? location.hash : '#/';
  if (!hash.startsWith('#/')) return; // an in-page anchor, not a page
  const nav = ++state.nav;
  markNav(hash);
  let page = null;
  let args = [];
  for (const [pattern, fn] of ROUTES) {
    const m = hash.match(pattern);
    if (m) {
      page = fn;
      args = m.slice(1);
      break;
    }
  }
  let content;
  try {
    content = page ? await page(...args) : [h1('Not found'), el('p', {}, 'There is no such page in the console.')];
  } catch (err) {
    if (err.status === 401 || nav !== state.nav) return;
    content = [h1(err.status === 404 ? 'Not found' : 'Something went wrong'), el('p', { class: 'error', role: 'alert' }, err.message),
      el('p', {}, el('a', { href: '#/' }, 'Back to the estate'))];
  }
  if (nav !== state.nav) return;
  main.replaceChildren();
  add(main, content);
  const heading = main.querySelector('h1');
  document.title = `${heading ? heading.textContent : 'Tenure'} · Tenure console`;
  say(message || '');
  if (heading) heading.focus();
}

/** Re-render the current page (after a change), announcing ``message``. */
const refresh = (message) => route(message);

/** Open the page at ``hash`` and announce ``message`` there. */
function go(hash, message) {
  state.pendingMessage = message || null;
  if (location.hash === hash) route();
  else location.hash = hash; // the hashchange listener routes
}

// ---------------------------------------------------------------- estate home

async function homePage() {
  const [estate, purchases] = await Promise.all([api('GET', E()), api('GET', E('/purchases'))]);
  const types = Object.entries(estate.summary.by_type).sort(([a], [b]) => a.localeCompare(b));
  return [
    h1(estate.name),
    el('p', { class: 'lead' }, 'Your licences, where they are, and who can manage them. ',
      el('a', { href: '#/pools' }, 'Open the pools'), ' to move licences and authenticate servers.'),
    section('Licences',
      table('Purchases', ['Sales order', 'Licence type', 'Count', 'Expires', 'State'],
        purchases.items.map((p) => [p.sales_order, p.licence_type, String(p.quantity), fmtDate(p.expires_at), stateBadge(p)]),
        'No licences have been recorded for this estate yet.')),
    section('Summary per licence type',
      table('Per licence type', ['Licence type', 'Total', 'In use', 'Available', 'Expiring soon', 'Unavailable'],
        types.map(([t, s]) => [t, String(s.total), String(s.in_use), String(s.available), String(s.expiring), String(s.unavailable)]),
        'No licences yet.')),
    adminsSection(estate.admins),
  ];
}

function adminsSection(admins) {
  const list = el('ul', { class: 'admins' });
  const errors = errorBox();
  const primary = state.me.primary;
  const draw = (items) => {
    list.replaceChildren(...items.map((a) => el('li', {},
      el('span', { class: 'admin-name' }, a.name),
      a.primary ? el('span', { class: 'badge badge-ok' }, 'primary') : null,
      a.id === state.me.admin_id ? el('span', { class: 'badge' }, 'you') : null,
      el('span', { class: 'muted' }, ` added ${fmtDate(a.created_at)}`),
      primary && !a.primary ? el('button', {
        type: 'button', class: 'small danger', 'aria-label': `Remove admin ${a.name}`,
        on: { click: () => removeAdmin(a) },
      }, 'Remove') : null)));
  };
  const reload = async () => draw((await api('GET', E('/admins'))).items);
  const removeAdmin = async (admin) => {
    const ok = await confirmDialog(`Remove admin ${admin.name}?`,
      `${admin.name}'s token stops working at once, and any console session of theirs ends.`, 'Yes, remove');
    if (!ok) return;
    clearError(errors);
    try {
      await api('DELETE', E(`/admins/${encodeURIComponent(admin.id)}`));
      await reload();
      say(`Admin ${admin.name} removed.`);
    } catch (err) {
      showError(errors, err);
    }
  };
  draw(admins);
  const parts = [list, errors];
  if (primary) {
    const name = el('input', { type: 'text', maxlength: '64', autocomplete: 'off' });
    const result = el('div', { class: 'new-secret', hidden: true });
    const form = el('form', { class: 'inline-form', novalidate: true },
      field('New admin\'s name', name), el('button', { type: 'submit' }, 'Invite admin'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearError(errors);
      try {
        const created = await busy(form, () => api('POST', E('/admins'), { name: name.value.trim() }));
        name.value = '';
        const tokenField = el('input', { type: 'text', readonly: true, value: created.token, class: 'mono' });
        result.replaceChildren(
          el('p', {}, `Give ${created.name} this admin token through a safe channel. It is shown only now.`),
          field(`Admin token for ${created.name}`, tokenField),
          el('button', { type: 'button', on: { click: () => copyText(created.token, tokenField) } }, 'Copy token'));
        result.hidden = false;
        await reload();
        say(`Admin ${created.name} invited.`);
        tokenField.focus();
        tokenField.select();
      } catch (err) {
        showError(errors, err);
      }
    });
    parts.push(form, result);
  } else {
    parts.push(el('p', { class: 'muted' }, 'Only the primary admin can invite or remove admins.'));
  }
  return section('Admins', parts);
}

// ---------------------------------------------------------------- pools

async function poolsPage() {
  const pools = (await api('GET', E('/pools'))).items;
  return [
    h1('Pools'),
    el('p', { class: 'lead' }, 'Every pool with its licences: allocated / in use / available. Open a pool to manage it.'),
    el('ul', { class: 'pool-list' }, pools.map((pool) => el('li', { class: 'card pool-card' },
      el('a', { href: `#/pools/${pool.id}`, class: 'pool-link' },
        el('span', { class: 'pool-name' }, pool.name), ' ', el('span', { class: 'pool-counts' }, counts(pool))),
      pool.is_default ? el('span', { class: 'badge' }, 'Default') : null,
      el('ul', { class: 'by-type' }, Object.entries(pool.by_type).sort(([a], [b]) => a.localeCompare(b))
        .map(([type, c]) => el('li', {}, el('span', { class: 'type' }, type), ` ${counts(c)}`))),
      pool.revoked_unexpired ? el('p', { class: 'muted' },
        `${pool.revoked_unexpired} freed seat(s) still have unexpired tokens.`) : null))),
  ];
}

function countInput(max) {
  return el('input', { type: 'number', min: '0', max: String(max), step: '1', value: '0', inputmode: 'numeric', class: 'count' });
}

const STATE_NOTE = { expiring: ' (expiring)', expired: ' (expired)', ended: ' (ended)', on_hold: ' (on hold)' };

/** The per-purchase count inputs of a move form: [{holding, input}]. */
function moveInputs(holdings, poolName) {
  return holdings.filter((h) => h.unused > 0).map((h) => ({
    holding: h,
    input: countInput(h.unused),
    label: `${h.sales_order} · ${h.licence_type} — ${h.unused} unused in ${poolName}${STATE_NOTE[h.state] || ''}`,
  }));
}

/** The move items the form asks for; throws (with the input to focus) on a bad number. */
function readMoves(rows) {
  const items = [];
  for (const { holding, input } of rows) {
    input.removeAttribute('aria-invalid');
    const text = input.value.trim();
    if (text === '' || text === '0') continue;
    const n = Number(text);
    if (!Number.isInteger(n) || n < 0) {
      input.setAttribute('aria-invalid', 'true');
      const err = new Error(`Enter a whole number of licences for sales order ${holding.sales_order}.`);
      err.input = input;
      throw err;
    }
    if (n > 0) items.push({ purchase_id: holding.purchase_id, count: n });
  }
  return items;
}

function markLacking(rows, err) {
  const lacking = new Set(((err.problem && err.problem.items) || []).map((i) => i.purchase_id));
  let first = null;
  for (const { holding, input } of rows) {
    if (lacking.has(holding.purchase_id)) {
      input.setAttribute('aria-invalid', 'true');
      first = first || input;
    }
  }
  return first;
}

async function addPoolPage() {
  const pools = (await api('GET', E('/pools'))).items;
  const home = pools.find((p) => p.is_default);
  const name = el('input', { type: 'text', maxlength: '64', autocomplete: 'off', required: true });
  const rows = moveInputs(home ? home.holdings : [], 'the Default Pool');
  const errors = errorBox();
  const form = el('form', { class: 'card', novalidate: true },
    field('Pool name', name, 'For example a customer, a region or a use. 1–64 characters, unique in the estate.'),
    el('fieldset', {},
      el('legend', {}, 'Licences to move from the Default Pool'),
      rows.length
        ? rows.map((r) => field(r.label, r.input))
        : el('p', { class: 'empty' }, 'The Default Pool has no unused licences. You can create the pool now and move licences into it later.')),
    errors,
    el('button', { type: 'submit', class: 'primary' }, 'Create pool'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    name.removeAttribute('aria-invalid');
    let moves;
    try {
      if (!name.value.trim()) {
        name.setAttribute('aria-invalid', 'true');
        const err = new Error('Give the pool a name.');
        err.input = name;
        throw err;
      }
      moves = readMoves(rows);
    } catch (err) {
      showError(errors, err);
      err.input.focus();
      return;
    }
    try {
      const pool = await busy(form, () => api('POST', E('/pools'), { name: name.value.trim(), moves }));
      go(`#/pools/${pool.id}`, `Pool ${pool.name} created.`);
    } catch (err) {
      showError(errors, err);
      if (err.problem && err.problem.code === 'name_taken') name.setAttribute('aria-invalid', 'true');
      (markLacking(rows, err) || name).focus();
    }
  });
  return [
    h1('Add pool'),
    el('p', { class: 'lead' }, 'Name the pool and choose, per sales order, how many unused licences to move into it from the Default Pool. It is created in one step: if any number cannot be moved, nothing changes.'),
    form,
  ];
}

async function poolPage(id) {
  const [pool, all, servers, leases] = await Promise.all([
    api('GET', P(id)), api('GET', E('/pools')),
    api('GET', E(`/servers?pool=${encodeURIComponent(id)}`)),
    api('GET', E(`/leases?pool=${encodeURIComponent(id)}&limit=500`)),
  ]);
  const others = all.items.filter((p) => p.id !== id);
  const codeErrors = errorBox();
  const authButton = el('button', { type: 'button', class: 'primary' }, 'Authenticate server/domain');
  authButton.addEventListener('click', async () => {
    clearError(codeErrors);
    try {
      authButton.disabled = true;
      state.lastCode = await api('POST', P(id, '/auth-codes'), {});
      go(`#/pools/${id}/codes`);
    } catch (err) {
      showError(codeErrors, err);
    } finally {
      authButton.disabled = false;
    }
  });
  return [
    h1(pool.name),
    el('p', { class: 'lead' }, counts(pool), '. ', `Lease lifetime ${duration(pool.lease_seconds)}.`,
      pool.is_default ? ' Every new purchase lands in this pool.' : null),
    pool.revoked_unexpired ? el('p', { class: 'notice' },
      `${pool.revoked_unexpired} seat(s) freed by revocation still have tokens that have not expired.`) : null,
    el('div', { class: 'actions' }, authButton, el('a', { href: `#/pools/${id}/codes` }, 'Live codes')),
    codeErrors,
    section('Licences',
      table('Licences held by this pool', ['Sales order', 'Licence type', 'Expires', 'State', 'Allocated', 'In use', 'Unused'],
        pool.holdings.map((h) => [h.sales_order, h.licence_type, fmtDate(h.expires_at), stateBadge(h),
          String(h.allocated), String(h.in_use), String(h.unused)]),
        'This pool holds no licences. Move some in below.')),
    serversSection(id, servers.items, others),
    leasesSection(leases),
    moveSection(pool, all.items),
    settingsSection(pool),
    deleteSection(pool, servers.items.length, leases.items.length),
  ];
}

function serversSection(poolId, servers, others) {
  const errors = errorBox();
  const rows = servers.map((s) => {
    const actions = el('div', { class: 'row-actions' });
    if (others.length) {
      const select = el('select', { 'aria-label': `Pool for ${s.name}` },
        others.map((p) => el('option', { value: p.id }, p.name)));
      actions.append(select, el('button', {
        type: 'button', class: 'small', 'aria-label': `Move ${s.name} to the chosen pool`,
        on: {
          click: async () => {
            clearError(errors);
            try {
              await api('PATCH', E(`/servers/${encodeURIComponent(s.id)}`), { pool_id: select.value });
              refresh(`${s.name} now takes its licences from ${select.selectedOptions[0].textContent}.`);
            } catch (err) {
              showError(errors, err);
            }
          },
        },
      }, 'Move'));
    }
    actions.append(el('button', {
      type: 'button', class: 'small danger', 'aria-label': `Remove ${s.name}`,
      on: {
        click: async () => {
          const ok = await confirmDialog(`Remove ${s.kind} ${s.name}?`,
            `Its encoders' ${s.in_use} licence(s) in use are freed at once and its token stops working. `
            + 'The host needs a new code to come back.', 'Yes, remove');
          if (!ok) return;
          clearError(errors);
          try {
            await api('DELETE', E(`/servers/${encodeURIComponent(s.id)}`));
            refresh(`${s.name} removed; its licences are free.`);
          } catch (err) {
            showError(errors, err);
          }
        },
      },
    }, 'Remove'));
    return [s.name, s.kind === 'domain' ? 'Domain' : 'Server', s.last_seen_at ? `${fmtTime(s.last_seen_at)} (${fromNow(s.last_seen_at)})` : 'not yet',
      String(s.in_use), actions];
  });
  return section('Servers and domains',
    table('Servers and domains of this pool', ['Name', 'Kind', 'Last check-in', 'Licences in use', 'Actions'], rows,
      'No server or domain is authenticated with this pool yet. Use “Authenticate server/domain” to make a code.'),
    errors);
}

function leasesSection(page) {
  const errors = errorBox();
  const rows = page.items.map((l) => [l.encoder, l.server_name, l.licence_type, String(l.count),
    `${fmtTime(l.expires_at)} (${fromNow(l.expires_at)})`,
    el('button', {
      type: 'button', class: 'small danger', 'aria-label': `Force-release ${l.encoder}`,
      on: {
        click: async () => {
          const ok = await confirmDialog(`Force-release ${l.encoder}?`,
            `Its ${l.count} ${l.licence_type} licence(s) go back to the pool now. Its agent learns at its next renewal and does not take them again on its own.`,
            'Yes, release');
          if (!ok) return;
          clearError(errors);
          try {
            await api('DELETE', E(`/leases/${encodeURIComponent(l.id)}`));
            refresh(`${l.encoder}'s licences released.`);
          } catch (err) {
            showError(errors, err);
          }
        },
      },
    }, 'Force-release')]);
  return section('Leases',
    table('Leases per encoder', ['Encoder', 'Server', 'Licence type', 'Count', 'Expires', 'Action'], rows,
      'No encoder holds licences from this pool.'),
    page.next ? el('p', { class: 'muted' }, `Showing the first ${page.items.length} leases.`) : null,
    errors);
}

function moveSection(pool, pools) {
  const others = pools.filter((p) => p.id !== pool.id);
  if (!others.length) {
    return section('Move licences', el('p', { class: 'empty' }, 'There is no other pool to move licences to or from. ',
      el('a', { href: '#/pools/new' }, 'Add a pool'), ' first.'));
  }
  const dirName = uid('dir');
  const into = el('input', { type: 'radio', name: dirName, value: 'in', id: uid('f'), checked: true });
  const out = el('input', { type: 'radio', name: dirName, value: 'out', id: uid('f') });
  const other = el('select', {}, others.map((p) => el('option', { value: p.id }, p.name)));
  const home = others.find((p) => p.is_default);
  if (home) other.value = home.id;
  const items = el('div', { class: 'move-items' });
  const errors = errorBox();
  let rows = [];
  const drawItems = () => {
    const chosen = others.find((p) => p.id === other.value);
    const source = into.checked ? chosen : pool;
    rows = moveInputs(source.holdings, source.name);
    items.replaceChildren(...(rows.length
      ? rows.map((r) => field(r.label, r.input))
      : [el('p', { class: 'empty' }, `${source.name} has no unused licences to move.`)]));
  };
  into.addEventListener('change', drawItems);
  out.addEventListener('change', drawItems);
  other.addEventListener('change', drawItems);
  drawItems();
  const form = el('form', { class: 'card', novalidate: true },
    el('fieldset', { class: 'radios' }, el('legend', {}, 'Direction'),
      el('div', {}, into, el('label', { for: into.id }, `Into ${pool.name}`)),
      el('div', {}, out, el('label', { for: out.id }, `Out of ${pool.name}`))),
    field('Other pool', other),
    items, errors,
    el('button', { type: 'submit' }, 'Move licences'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    let moves;
    try {
      moves = readMoves(rows);
    } catch (err) {
      showError(errors, err);
      err.input.focus();
      return;
    }
    if (!moves.length) {
      showError(errors, new Error('Enter how many licences to move for at least one sales order.'));
      if (rows.length) rows[0].input.focus();
      return;
    }
    const [from, to] = into.checked ? [other.value, pool.id] : [pool.id, other.value];
    try {
      await busy(form, () => api('POST', E('/moves'), { from_pool: from, to_pool: to, items: moves }));
      const n = moves.reduce((sum, m) => sum + m.count, 0);
      refresh(`${n} licence(s) moved.`);
    } catch (err) {
      showError(errors, err);
      const bad = markLacking(rows, err);
      if (bad) bad.focus();
    }
  });
  return section('Move licences', el('p', {}, 'Only unused licences move. Choose the direction and the other pool, then how many per sales order.'), form);
}

function settingsSection(pool) {
  const errors = errorBox();
  const name = el('input', { type: 'text', maxlength: '64', value: pool.name, autocomplete: 'off' });
  const renameForm = el('form', { class: 'inline-form', novalidate: true },
    field('Name', name), el('button', { type: 'submit' }, 'Rename pool'));
  renameForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    try {
      const updated = await busy(renameForm, () => api('PATCH', P(pool.id), { name: name.value.trim() }));
      refresh(`Pool renamed to ${updated.name}.`);
    } catch (err) {
      showError(errors, err);
      name.focus();
    }
  });
  const seconds = el('input', { type: 'number', min: '60', max: String(30 * 86400), step: '1', value: String(pool.lease_seconds), inputmode: 'numeric' });
  const leaseForm = el('form', { class: 'inline-form', novalidate: true },
    field('Lease lifetime in seconds', seconds, `60 s to 30 days; now ${duration(pool.lease_seconds)}. Agents renew at a third of it; a revoked lease's token stays valid until it runs out.`),
    el('button', { type: 'submit' }, 'Save lease lifetime'));
  leaseForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    const n = Number(seconds.value);
    if (!Number.isInteger(n)) {
      showError(errors, new Error('Enter the lease lifetime as a whole number of seconds.'));
      seconds.focus();
      return;
    }
    try {
      const updated = await busy(leaseForm, () => api('PATCH', P(pool.id), { lease_seconds: n }));
      refresh(`Lease lifetime set to ${duration(updated.lease_seconds)}; new and renewed leases use it.`);
    } catch (err) {
      showError(errors, err);
      seconds.focus();
    }
  });
  return section('Settings', renameForm, leaseForm, errors);
}

function deleteSection(pool, servers, leases) {
  if (pool.is_default) {
    return section('Delete pool', el('p', {}, 'The Default Pool cannot be deleted: every purchase lands in it.'));
  }
  if (servers || leases) {
    return section('Delete pool', el('p', {},
      `This pool cannot be deleted while it has ${servers} server(s) or domain(s) and ${leases} lease(s). Remove or move them first.`));
  }
  const errors = errorBox();
  const button = el('button', { type: 'button', class: 'danger' }, 'Delete pool');
  button.addEventListener('click', async () => {
    const ok = await confirmDialog(`Delete pool ${pool.name}?`,
      `Its ${pool.allocated} licence(s) go back to the Default Pool.`, 'Yes, delete');
    if (!ok) return;
    clearError(errors);
    try {
      await api('DELETE', P(pool.id));
      go('#/pools', `Pool ${pool.name} deleted; its licences are back in the Default Pool.`);
    } catch (err) {
      showError(errors, err);
    }
  });
  return section('Delete pool', el('p', {}, `Its licences go back to the Default Pool.`), button, errors);
}

// ---------------------------------------------------------------- authentication codes

async function codesPage(id) {
  const [pool, codes, estate] = await Promise.all([
    api('GET', P(id)), api('GET', E(`/auth-codes?pool=${encodeURIComponent(id)}`)), api('GET', E())]);
  const fresh = state.lastCode && state.lastCode.pool_id === id ? state.lastCode : null;
  state.lastCode = null; // shown once: a reload or a later visit does not show it again
  const admins = new Map(estate.admins.map((a) => [a.id, a.name]));
  const errors = errorBox();
  const parts = [h1('Authenticate server/domain'), el('p', { class: 'lead' }, 'Pool: ', el('a', { href: `#/pools/${id}` }, pool.name))];
  if (fresh) {
    const grouped = groupCode(fresh.code);
    const command = `tenure-agent enroll ${grouped} --broker ${state.brokerUrl || location.origin}`;
    const codeNode = el('p', { class: 'code', id: 'auth-code' }, grouped);
    const commandNode = el('code', {}, command);
    parts.push(el('div', { class: 'card code-card' },
      el('p', {}, 'Give this code to the field technician. It works once.'),
      codeNode,
      el('p', {}, `Expires ${fmtTime(fresh.expires_at)} (${fromNow(fresh.expires_at)}).`),
      el('button', { type: 'button', on: { click: () => copyText(fresh.code, codeNode) } }, 'Copy code'),
      el('h2', {}, 'On the encoder host'),
      el('pre', { class: 'command' }, commandNode),
      el('button', { type: 'button', on: { click: () => copyText(command, commandNode) } }, 'Copy command'),
      el('p', { class: 'hint' }, 'For a domain rather than the whole server, add ', el('code', {}, '--domain NAME'),
        '. The code is shown only now; the broker keeps only a keyed hash of it.')));
  } else {
    const again = el('button', { type: 'button', class: 'primary' }, 'Make a new code');
    again.addEventListener('click', async () => {
      clearError(errors);
      try {
        again.disabled = true;
        state.lastCode = await api('POST', P(id, '/auth-codes'), {});
        refresh();
      } catch (err) {
        showError(errors, err);
        again.disabled = false;
      }
    });
    parts.push(el('p', {}, 'A code is shown only once, right after it is made.'), again);
  }
  parts.push(errors, section('Live codes',
    table('Live codes of this pool', ['Made', 'Expires', 'Made by', 'Action'], codes.items.map((c) => [
      fmtTime(c.created_at), `${fmtTime(c.expires_at)} (${fromNow(c.expires_at)})`, admins.get(c.created_by) || c.created_by,
      el('button', {
        type: 'button', class: 'small danger', 'aria-label': `Revoke the code made ${fmtTime(c.created_at)}, expiring ${fmtTime(c.expires_at)}`,
        on: {
          click: async () => {
            const ok = await confirmDialog('Revoke this code?', 'Nobody will be able to use it.', 'Yes, revoke');
            if (!ok) return;
            clearError(errors);
            try {
              await api('DELETE', E(`/auth-codes/${encodeURIComponent(c.id)}`));
              refresh('Code revoked.');
            } catch (err) {
              showError(errors, err);
            }
          },
        },
      }, 'Revoke')]), 'No live codes for this pool.')));
  return parts;
}

// ---------------------------------------------------------------- audit log

async function auditPage(query) {
  const params = new URLSearchParams(query || '');
  const poolFilter = params.get('pool') || '';
  const actionFilter = params.get('action') || '';
  const [pools, purchases] = await Promise.all([api('GET', E('/pools')), api('GET', E('/purchases'))]);
  const poolNames = new Map(pools.items.map((p) => [p.id, p.name]));
  const salesOrders = new Map(purchases.items.map((p) => [p.id, p.sales_order]));
  const kinds = new Map(EVENT_KINDS);
  const poolSelect = el('select', {}, el('option', { value: '' }, 'All pools'),
    pools.items.map((p) => el('option', { value: p.id }, p.name)));
  poolSelect.value = poolFilter;
  const kindSelect = el('select', {}, el('option', { value: '' }, 'All kinds'),
    EVENT_KINDS.map(([value, text]) => el('option', { value }, text)));
  kindSelect.value = actionFilter;
  const filters = el('form', { class: 'inline-form filters', novalidate: true },
    field('Pool', poolSelect), field('Kind of event', kindSelect), el('button', { type: 'submit' }, 'Show events'));
  filters.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (poolSelect.value) q.set('pool', poolSelect.value);
    if (kindSelect.value) q.set('action', kindSelect.value);
    const s = q.toString();
    go(s ? `#/audit?${s}` : '#/audit');
  });

  const body = el('tbody');
  const errors = errorBox();
  const more = el('button', { type: 'button', hidden: true }, 'Show more events');
  let cursor = '';
  const load = async () => {
    const q = new URLSearchParams({ limit: '50' });
    if (cursor) q.set('after', cursor);
    if (poolFilter) q.set('pool', poolFilter);
    if (actionFilter) q.set('action', actionFilter);
    const page = await api('GET', E(`/events?${q}`));
    const first = page.items.length ? body.children.length : -1;
    for (const ev of page.items) {
      body.append(el('tr', {},
        el('th', { scope: 'row' }, fmtTime(ev.at)),
        el('td', {}, who(ev.actor)),
        el('td', {}, kinds.get(ev.action) || ev.action),
        el('td', {}, ev.pool_id ? (poolNames.get(ev.pool_id) || 'a deleted pool') : '—'),
        el('td', { class: 'details' }, describe(ev, poolNames, salesOrders))));
    }
    cursor = page.next || '';
    more.hidden = !page.next;
    return first;
  };
  more.addEventListener('click', async () => {
    clearError(errors);
    try {
      const first = await load();
      if (first >= 0) {
        const row = body.children[first].querySelector('th');
        row.setAttribute('tabindex', '-1');
        row.focus();
      }
    } catch (err) {
      showError(errors, err);
    }
  });
  await load();
  const log = body.children.length
    ? el('div', { class: 'table-wrap' }, el('table', {}, el('caption', { class: 'visually-hidden' }, 'Audit log, oldest first'),
      el('thead', {}, el('tr', {}, ['When', 'Who', 'What', 'Pool', 'Details'].map((h) => el('th', { scope: 'col' }, h)))), body))
    : el('p', { class: 'empty' }, 'No events match.');
  return [h1('Audit log'), el('p', { class: 'lead' }, 'Every change in the estate, oldest first.'), filters, log, more, errors];
}

function who(actor) {
  if (actor.kind === 'system') return 'The broker';
  if (actor.kind === 'operator') return 'The vendor (operator)';
  return `${actor.name || actor.id} (${actor.kind})`;
}

const REASONS = {
  revoked_by_admin: 'force-released by an admin',
  server_removed: 'its server was removed',
  released: 'released by its agent',
  expired: 'not renewed in time',
};

function describe(ev, poolNames, salesOrders) {
  const d = ev.details || {};
  const pool = (id) => poolNames.get(id) || id;
  const so = (id) => salesOrders.get(id) || id;
  switch (ev.action) {
    case 'licences.moved':
      return `${(d.items || []).map((i) => `${i.count} × ${so(i.purchase_id)}`).join(', ')} from ${pool(d.from_pool)} to ${pool(d.to_pool)}`;
    case 'pool.created':
    case 'pool.deleted':
    case 'admin.added':
    case 'admin.removed':
      return d.name || '';
    case 'pool.updated':
      return `${d.before.name} → ${d.after.name}; lease lifetime ${duration(d.before.lease_seconds)} → ${duration(d.after.lease_seconds)}`;
    case 'server.enrolled':
    case 'server.removed':
      return `${d.name} (${d.kind})${d.leases_freed ? `; ${d.leases_freed} lease(s) freed` : ''}`;
    case 'server.rebound':
      return `${d.name}: ${pool(d.before.pool_id)} → ${pool(d.after.pool_id)}`;
    case 'purchase.recorded':
      return `${d.sales_order}: ${d.quantity} × ${d.licence_type}, expires ${fmtDate(d.expires_at)}`;
    case 'auth_code.created':
      return `expires ${fmtTime(d.expires_at)}`;
    case 'lease.granted':
      return `${d.encoder}: ${d.after} × ${d.licence_type}`;
    case 'lease.changed':
      return `${d.encoder}: ${d.before.count} × ${d.before.licence_type} → ${d.after.count} × ${d.after.licence_type}`;
    case 'lease.released':
    case 'lease.revoked':
    case 'lease.lapsed':
      return `${d.encoder}: ${d.count} × ${d.licence_type} (${REASONS[d.reason] || d.reason})`;
    default:
      return Object.entries(d).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join('; ');
  }
}

boot();
