// Hash routing: '#/pools/<id>' and the like name the page; main.js supplies the table of
// pages, so that this module imports none of them (and none of them import a cycle).

import { state } from './state.js';
import { add, el, h1, main, say, topbar } from './dom.js';

let ROUTES = [];

/** The pages: [[pattern, async (...groups) => content], …], first match wins. */
export function setRoutes(routes) {
  ROUTES = routes;
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

export async function route(announce) {
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
export const refresh = (message) => route(message);

/** Open the page at ``hash`` and announce ``message`` there. */
export function go(hash, message) {
  state.pendingMessage = message || null;
  if (location.hash === hash) route();
  else location.hash = hash; // the hashchange listener routes
}
