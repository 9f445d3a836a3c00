// The audit log (#/audit?pool=…&action=…): every change in the estate, newest first
// (the broker's order=desc), 50 at a time; "Show more events" goes further back.

import { api, listAll, E } from '../api.js';
import { clearError, el, errorBox, field, h1, showError } from '../dom.js';
import { describeEvent } from '../events.js';
import { fmtTime, noBreak } from '../format.js';
import { go } from '../router.js';

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
        el('td', { role: 'cell', class: 'details', 'data-label': 'Details' }, describeEvent(ev, names))));
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
    ? el('div', { class: 'table-wrap audit-log' }, el('table', { role: 'table' }, el('caption', { class: 'visually-hidden' }, 'Audit log, newest first'),
      el('thead', {}, el('tr', { role: 'row' }, ['When', 'Who', 'What', 'Pool', 'Details'].map((h) => el('th', { scope: 'col', role: 'columnheader' }, h)))), body))
    : el('p', { class: 'empty' }, 'No events match.');
  return [h1('Audit log'), el('p', { class: 'lead' }, 'Every change in the estate, newest first.'), filters, log, more, errors];
}

function who(actor) {
  if (actor.kind === 'system') return 'The broker';
  if (actor.kind === 'operator') return 'The vendor (operator)';
  return `${actor.name || actor.id} (${actor.kind})`;
}
