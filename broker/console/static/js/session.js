// The session's life in the page: starting it (after sign-in or a reload), the top bar
// with "Sign out", and ending it, on the broker too.

import { ApiError, call, whenSessionEnds } from './api.js';
import { el, say, topbar } from './dom.js';
import { signInPage } from './pages/sign-in.js';
import { leavePages, route } from './router.js';
import { state } from './state.js';

/** Open the console for ``session`` (an answer of /console/session). */
export async function begin(session) {
  state.csrf = session.csrf_token;
  state.brokerUrl = session.broker_url;
  const me = await call('GET', '/v1/me');
  if (me.kind !== 'admin') throw new ApiError(403, { detail: 'The console is for estate admins.' });
  state.me = me;
  renderTopbar();
  await route();
}

/** Replace the pages and the top bar by the sign-in form, with ``message`` above it. */
export function showSignIn(message) {
  leavePages();
  topbar.hidden = true;
  topbar.replaceChildren();
  signInPage(message, begin);
}

function sessionEnded(message) {
  state.me = null;
  state.csrf = null;
  showSignIn(message || 'Your session ended (you were signed out for inactivity or after 12 hours). Sign in again.');
}

whenSessionEnds(sessionEnded);

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
  const links = [['#/', 'Estate'], ['#/pools', 'See all pools'], ['#/pools/new', 'Add pool'], ['#/audit', 'Audit log'], ['#/webhooks', 'Webhooks']];
  topbar.replaceChildren(
    el('p', { class: 'brand' }, 'Tenure', el('span', { class: 'estate-name' }, state.me.estate_name)),
    el('nav', { 'aria-label': 'Console' }, el('ul', {}, links.map(([href, text]) => el('li', {}, el('a', { href }, text))))),
    el('div', { class: 'who' },
      el('span', {}, `Signed in as ${state.me.name}`),
      el('button', { type: 'button', on: { click: signOut } }, 'Sign out')));
  topbar.hidden = false;
}
