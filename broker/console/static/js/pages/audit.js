// The audit log (#/audit?pool=…&action=…): every change in the estate, oldest first,
// 50 at a time.

import { api, listAll, E } from '../api.js';
import { clearError, el, errorBox, field, h1, showError } from '../dom.js';
import { duration, fmtDate, fmtTime } from '../format.js';
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
