// Tenure admin console: native ES modules, no dependencies, no build step.
//
// This entry point wires the pages to their routes and starts the session. The rest:
//   js/state.js    the signed-in session in memory (CSRF token, who is signed in)
//   js/api.js      the /v1 JSON API: fetch, the CSRF header, problem+json errors
//   js/dom.js      element builders (text only, never markup), the live region, dialogs
//   js/format.js   times, durations, counts, plurals, state badges
//   js/events.js   an audit event's details as a sentence
//   js/router.js   hash routes, focus on each page's <h1>, announcements
//   js/session.js  sign-in, the top bar, sign-out
//   js/moves.js    the per-sales-order count fields of the move forms
//   js/actions.js  confirm, then call: the one shape of every destructive action
//   js/pages/…     one module per page

import { call } from './js/api.js';
import { main } from './js/dom.js';
import { addPoolPage } from './js/pages/add-pool.js';
import { auditPage } from './js/pages/audit.js';
import { codesPage } from './js/pages/auth-code.js';
import { homePage } from './js/pages/estate.js';
import { poolPage } from './js/pages/pool.js';
import { poolsPage } from './js/pages/pools.js';
import { route, setRoutes } from './js/router.js';
import { begin, showSignIn } from './js/session.js';
import { webhookPage, webhooksPage } from './js/pages/webhooks.js';

setRoutes([
  [/^#\/$/, homePage],
  [/^#\/pools$/, poolsPage],
  [/^#\/pools\/new$/, addPoolPage],
  [/^#\/pools\/([A-Za-z0-9_-]+)$/, poolPage],
  [/^#\/pools\/([A-Za-z0-9_-]+)\/codes$/, codesPage],
  [/^#\/audit(?:\?(.*))?$/, auditPage],
  [/^#\/webhooks$/, webhooksPage],
  [/^#\/webhooks\/([A-Za-z0-9_-]+)$/, webhookPage],
]);

async function boot() {
  document.getElementById('skip-link').addEventListener('click', (ev) => {
    ev.preventDefault();
    main.focus();
  });
  window.addEventListener('hashchange', () => route());
  try {
    const session = await call('GET', '/console/session');
    await begin(session);
  } catch (err) {
    // session_ended: the browser still had a session cookie the broker no longer knows
    // (it restarted, or the session ran out): tell the admin why they must sign in again.
    showSignIn(err.problem && err.problem.code === 'session_ended' ? err.message : undefined);
  }
}

boot();
