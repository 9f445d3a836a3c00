// Authenticate server/domain (#/pools/<id>/codes): the code just made, shown once, with
// the command for the host; and the pool's live codes.

import { confirmAndCall } from '../actions.js';
import { api, listAll, E, P } from '../api.js';
import { clearError, copyText, el, errorBox, h1, section, showError, table } from '../dom.js';
import { fmtTime, fromNow, groupCode } from '../format.js';
import { go, refresh } from '../router.js';
import { state } from '../state.js';

// The code just made, until this page has shown it. Only this module holds it: it is
// never in shared state, storage or the URL, so a reload or a later visit cannot show it.
let justMade = null;

/**
 * Make a new code for pool ``poolId`` and open the codes page, which shows it once.
 * The pool page's "Authenticate server/domain" button calls this; an API error is thrown
 * for the caller to show.
 */
export async function authenticate(poolId) {
  justMade = await api('POST', P(poolId, '/auth-codes'), {});
  go(`#/pools/${poolId}/codes`);
}

export async function codesPage(id) {
  const [pool, codes, estate] = await Promise.all([
    api('GET', P(id)), listAll(E(`/auth-codes?pool=${encodeURIComponent(id)}`)), api('GET', E())]);
  const fresh = justMade && justMade.pool_id === id ? justMade : null;
  justMade = null;
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
      state.brokerUrl ? null : addressWarning(),
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
        await authenticate(id);
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
          click: confirmAndCall({
            ask: { title: 'Revoke this code?', message: 'Nobody will be able to use it.', confirm: 'Yes, revoke' },
            errors,
            call: () => api('DELETE', E(`/auth-codes/${encodeURIComponent(c.id)}`)),
            done: () => refresh('Code revoked.'),
          }),
        },
      }, 'Revoke')]), 'No live codes for this pool.')));
  return parts;
}

const isLoopback = (host) => host === 'localhost' || host.endsWith('.localhost') || /^127\./.test(host) || host === '[::1]';

/**
 * Without the broker's ``public_url`` setting the command carries the address this page
 * was opened at, which may not be one an encoder host can reach: say so next to it.
 */
function addressWarning() {
  const host = location.hostname;
  return el('div', { class: 'notice', role: 'note', id: 'address-warning' },
    el('p', {}, 'This command uses the address you opened the console at, ', el('code', {}, location.origin),
      ', because the broker\'s ', el('code', {}, 'public_url'), ' setting is not set. ',
      'Ask the operator to set ', el('code', {}, 'public_url'), ' to the address encoder hosts reach the broker at.'),
    isLoopback(host)
      ? el('p', {}, el('strong', {}, `${host} is a loopback address: it will not work from an encoder host`),
        ', where it names the host itself.')
      : null);
}
