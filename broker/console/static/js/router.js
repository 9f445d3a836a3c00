// Hash routing: '#/pools/<id>' and the like name the page; the entry module, console.js,
// supplies the table of pages, so that this module imports none of them and a page can
// import go() and refresh() from here without an import cycle.

import { add, el, h1, main, say, topbar } from './dom.js';
import { state } from './state.js';

let ROUTES = [];
let pendingMessage = null; // what to announce on the page go() is opening
let nav = 0; // bumps on each navigation, so that a slow page does not overwrite a newer one

/** The pages: [[pattern, async (...groups) => content], …], first match wins. */
export function setRoutes(routes) {
  ROUTES = routes;
}

function markNav(hash) {
  const page = hash.split('?')[0];
  let current = page === '#/pools/new' || page === '#/' ? page : null;
  if (!current) current = page.startsWith('#/pools') ? '#/pools' : page.startsWith('#/audit') ? '#/audit' : page.startsWith('#/webhooks') ? '#/webhooks' : null;
  for (const a of topbar.querySelectorAll('nav a')) {
    if (a.getAttribute('href') === current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

export async function route(announce) {
  if (!state.me) return;
  const message = announce || pendingMessage;
  pendingMessage = null;
  const hash = location.hash && location.hash !== '#' ? location.hash : '#/';
  if (!hash.startsWith('#/')) return; // an in-page anchor, not a page
  const current = ++nav;
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
    if (err.status === 401 || current !== nav) return;
    content = [h1(err.status === 404 ? 'Not found' : 'Something went wrong'), el('p', { class: 'error', role: 'alert' }, err.message),
      el('p', {}, el('a', { href: '#/' }, 'Back to the estate'))];
  }
  if (current !== nav) return;
  main.replaceChildren();
  add(main, content);
  const heading = main.querySelector('h1');
  document.title = `${heading ? heading.textContent : 'Tenure'} · Tenure console`;
  say(message || '');
  if (heading) heading.focus();
}

/** Re-render the current page (after a change), announcing ``message``. */
export const refresh = (message) => route(message);

/** Open the page at ``hash`` and announce ``message`` there. */
export function go(hash, message) {
  pendingMessage = message || null;
  if (location.hash === hash) route();
  else location.hash = hash; // the hashchange listener routes
}

/** Leave the pages (for the sign-in form): a page still loading will not be drawn. */
export function leavePages() {
  nav += 1;
}
