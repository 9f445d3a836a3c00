// The audit log (#/audit?pool=…&action=…): every change in the estate, newest first
// (the broker's order=desc), 50 at a time; "Show more events" goes further back. Above it,
// the state of the estate's hash chain (GET …/events/chain, followed slice by slice) and
// its newest hash, which an admin notes to prove the log later; each event shows its hash.

import { api, listAll, E } from '../api.js';
import { clearError, el, errorBox, field, h1, showError } from '../dom.js';
import { describeEvent } from '../events.js';
import { fmtTime, noBreak } from '../format.js';
import { go } from '../router.js';

const EVENT_KINDS = [
  ['pool.created', 'Pool created'],
  ['pool.updated', 'Pool renamed, lease lifetime or soft-lock changed'],
  ['pool.deleted', 'Pool deleted'],
  ['licences.moved', 'Licences moved'],
  ['auth_code.created', 'Authentication code made'],
  ['auth_code.revoked', 'Authentication code revoked'],
  ['server.enrolled', 'Server or domain authenticated'],
  ['server.rebound', 'Server or domain moved to another pool'],
  ['server.removed', 'Server or domain removed'],
  ['server.limits_set', 'Server or domain limits changed'],
  ['soft_lock.overridden', 'Held seats freed by an admin'],
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
  ['webhook.created', 'Webhook endpoint added'],
  ['webhook.deleted', 'Webhook endpoint deleted'],
  ['webhook.secret_rotated', 'Webhook secret rotated'],
  ['webhook.tested', 'Webhook test event sent'],
];

export async function auditPage(query) {
  const params = new URLSearchParams(query || '');
  const poolFilter = params.get('pool') || '';
  const actionFilter = params.get('action') || '';
  const [pools, purchases] = await Promise.all([listAll(E('/pools')), listAll(E('/purchases'))]);
  const poolNames = new Map(pools.items.map((p) => [p.id, p.name]));
  const salesOrders = new Map(purchases.items.map((p) => [p.id, p.sales_order]));
  const names = {
    pool: (id) => poolNames.get(id) || 'a deleted pool',
    salesOrder: (id) => salesOrders.get(id) || id,
  };
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
    const q = new URLSearchParams({ order: 'desc', limit: '50' });
    if (cursor) q.set('after', cursor);
    if (poolFilter) q.set('pool', poolFilter);
    if (actionFilter) q.set('action', actionFilter);
    const page = await api('GET', E(`/events?${q}`));
    const first = page.items.length ? body.children.length : -1;
    for (const ev of page.items) {
      // Explicit roles: on a phone the rows are laid out as cards (display: block), and
      // some browsers drop a table's semantics with its table layout.
      body.append(el('tr', { role: 'row' },
        el('th', { scope: 'row', role: 'rowheader' }, noBreak(fmtTime(ev.at))),
        el('td', { role: 'cell', 'data-label': 'Who' }, who(ev.actor)),
        el('td', { role: 'cell', 'data-label': 'What' }, kinds.get(ev.action) || ev.action),
        el('td', { role: 'cell', 'data-label': 'Pool' }, ev.pool_id ? names.pool(ev.pool_id) : '—'),
        el('td', { role: 'cell', class: 'details', 'data-label': 'Details' }, describeEvent(ev, names)),
        el('td', { role: 'cell', class: 'hash', 'data-label': 'Hash' }, shortHash(ev))));
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
  const chain = el('p', { class: 'chain', 'aria-live': 'polite' }, 'Checking the audit chain…');
  checkChain(chain);
  const log = body.children.length
    ? el('div', { class: 'table-wrap audit-log' }, el('table', { role: 'table' }, el('caption', { class: 'visually-hidden' }, 'Audit log, newest first'),
      el('thead', {}, el('tr', { role: 'row' }, ['When', 'Who', 'What', 'Pool', 'Details', 'Hash'].map((h) => el('th', { scope: 'col', role: 'columnheader' }, h)))), body))
    : el('p', { class: 'empty' }, 'No events match.');
  return [h1('Audit log'), el('p', { class: 'lead' }, 'Every change in the estate, newest first.'), chain, filters, log, more, errors];
}

function who(actor) {
  if (actor.kind === 'system') return 'The broker';
  if (actor.kind === 'operator') return 'The vendor (operator)';
  return `${actor.name || actor.id} (${actor.kind})`;
}

function shortHash(ev) {
  if (!ev.hash) return 'not chained yet';
  return el('code', { title: `hash ${ev.hash}\nafter ${ev.prev_hash}` }, `${ev.hash.slice(0, 12)}…`);
}

/** Walk the estate's chain on the broker, a slice per call, and say how it stands. */
async function checkChain(status) {
  let after = '';
  let checked = 0;
  let last = null;
  try {
    for (;;) {
      const part = await api('GET', E(`/events/chain${after ? `?after=${encodeURIComponent(after)}` : ''}`));
      checked += part.checked;
      last = part.last || last;
      if (part.broken) {
        status.className = 'chain broken';
        status.replaceChildren(`The audit chain is broken at event ${part.broken.id}: ${part.broken.reason}. `
          + 'Events from there on may have been changed; ask your vendor to run tenure-broker check.');
        return;
      }
      if (!part.next || !status.isConnected) break;
      after = part.next;
      status.textContent = `Checking the audit chain… ${checked.toLocaleString('en-GB')} events so far`;
    }
  } catch (err) {
    status.className = 'chain broken';
    status.textContent = `The audit chain could not be checked: ${err.message}`;
    return;
  }
  status.className = 'chain whole';
  if (!last) {
    status.textContent = 'The audit chain is whole: no events yet.';
    return;
  }
  status.replaceChildren(
    `The audit chain is whole: ${checked.toLocaleString('en-GB')} events check out. Newest hash (note it to prove this log later): `,
    el('code', { class: 'newest-hash' }, last.hash));
}
