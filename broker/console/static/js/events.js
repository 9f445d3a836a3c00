// How one audit event's details read in the audit log: a sentence an admin can take in at
// a glance ("SO-1001: 4 licences moved from Default Pool to Paris", "lease lifetime
// 1 h → 2 h"), never the broker's JSON. An action this module does not know yet (a newer
// broker) still reads as words: "field: before → after".

import { duration, fmtDate, fmtTime, listOf, plural } from './format.js';

const ENDED = {
  revoked_by_admin: 'force-released by an admin',
  server_removed: 'its server was removed',
  released: 'released by its agent',
  expired: 'not renewed in time',
  grace_ended: 'the grace period of its licences ended',
};

const REFUSED = {
  released: 'the lease had been released',
  revoked: 'the lease had been force-released',
  lapsed: 'the lease had lapsed',
};

const STATUS = { valid: 'valid', on_hold: 'on hold' };

const KIND = { server: 'server', domain: 'domain' };

/**
 * The details of audit event ``ev`` as text. ``names`` resolves ids the event carries:
 * ``{ pool(id), salesOrder(id) }``, each falling back to something readable.
 */
export function describeEvent(ev, names) {
  const d = ev.details || {};
  const pool = names.pool;
  const so = names.salesOrder;
  switch (ev.action) {
    case 'estate.created':
      return d.admin_name ? `${d.name}, with ${d.admin_name} as its first admin` : d.name || '';
    case 'admin.added':
    case 'admin.removed':
    case 'pool.created':
      return d.name || '';
    case 'pool.deleted':
      return poolDeleted(d);
    case 'pool.updated':
      return changes([
        ['renamed', d.before && d.before.name, d.after && d.after.name],
        ['lease lifetime', secs(d.before), secs(d.after)],
        ['soft-lock for hardware', lock(d.before, 'hardware'), lock(d.after, 'hardware')],
        ['soft-lock for containers', lock(d.before, 'container'), lock(d.after, 'container')],
      ]) || 'no change';
    case 'licences.moved':
      return moved(d, pool, so);
    case 'purchase.recorded':
      return `${d.sales_order}: ${plural(d.quantity, 'licence')} of ${d.licence_type}, expires ${fmtDate(d.expires_at)}`;
    case 'purchase.updated':
      return `${d.sales_order}: ${changes([
        ['', STATUS[d.before.status] || d.before.status, STATUS[d.after.status] || d.after.status],
        ['expires', fmtDate(d.before.expires_at), fmtDate(d.after.expires_at)],
      ]) || 'no change'}`;
    case 'auth_code.created':
      return `expires ${fmtTime(d.expires_at)}`;
    case 'server.enrolled':
      return `${d.name} (${KIND[d.kind] || d.kind})`;
    case 'server.removed':
      return `${d.name} (${KIND[d.kind] || d.kind})${d.leases_freed ? `; ${plural(d.leases_freed, 'lease')} freed` : ''}`
        + (d.override_soft_lock ? '; soft-lock overridden' : '');
    case 'server.limits_set':
      return `${d.name}: ${beforeAfter(limitsWords(d.before), limitsWords(d.after))}`;
    case 'soft_lock.overridden':
      return `${d.encoder}: ${plural(d.soft_lock_freed, 'held seat')} freed`;
    case 'server.rebound':
      return `${d.name}: ${pool(d.before.pool_id)} → ${pool(d.after.pool_id)}`;
    case 'lease.granted':
      return `${d.encoder}: ${d.after} × ${d.licence_type}`;
    case 'lease.changed':
      return `${d.encoder}: ${leaseChange(d.before, d.after)}`;
    case 'lease.released':
    case 'lease.revoked':
    case 'lease.lapsed':
      return `${d.encoder}: ${d.count} × ${d.licence_type} (${ENDED[d.reason] || words(d.reason)})`
        + (d.soft_locked ? `; ${plural(d.soft_locked, 'seat')} held for it` : '')
        + (d.override_soft_lock ? '; soft-lock overridden' : '');
    case 'lease.renewal_refused':
      return REFUSED[d.reason] || words(d.reason || '');
    default:
      return generic(d);
  }
}

const lock = (side, kind) => (side && side.soft_lock_seconds
  ? (side.soft_lock_seconds[kind] ? duration(side.soft_lock_seconds[kind]) : 'off') : undefined);

/** ``{type: {max, reserved}}`` as ``{type: "max 3, 2 reserved"}``, for "before → after". */
function limitsWords(limits) {
  return Object.fromEntries(Object.entries(limits || {}).map(([t, l]) => [t,
    [l.max === null ? 'no cap' : `max ${l.max}`, `${l.reserved} reserved`].join(', ')]));
}

const secs = (side) => (side && side.lease_seconds !== undefined ? duration(side.lease_seconds) : undefined);

/** "a → b" for each [label, before, after] that changed, joined by "; ". */
function changes(rows) {
  return rows.filter(([, a, b]) => a !== b)
    .map(([label, a, b]) => `${label ? `${label} ` : ''}${a} → ${b}`).join('; ');
}

function moved(d, pool, so) {
  const items = (d.items || []).map((i, n) => (n === 0 ? `${so(i.purchase_id)}: ${plural(i.count, 'licence')}` : `${so(i.purchase_id)}: ${i.count}`));
  return `${listOf(items)} moved from ${pool(d.from_pool)} to ${pool(d.to_pool)}`;
}

function poolDeleted(d) {
  const back = Object.values(d.returned_to_default || {}).reduce((sum, n) => sum + n, 0);
  return back ? `${d.name}; ${plural(back, 'licence')} back in the Default Pool` : d.name || '';
}

function leaseChange(before, after) {
  if (before.licence_type === after.licence_type) {
    return `${before.count} → ${plural(after.count, `${after.licence_type} licence`, `${after.licence_type} licences`)}`;
  }
  return `${before.count} × ${before.licence_type} → ${after.count} × ${after.licence_type}`;
}

const words = (key) => String(key).replace(/_/g, ' ');

/** Details of an action this console does not know: "key: value; field before → after". */
function generic(d) {
  const parts = Object.entries(d).filter(([key]) => key !== 'before' && key !== 'after')
    .map(([key, value]) => `${words(key)}: ${flat(value)}`);
  if ('before' in d || 'after' in d) parts.push(beforeAfter(d.before, d.after));
  return parts.join('; ');
}

function beforeAfter(before, after) {
  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (!isObject(before) || !isObject(after)) return `${flat(before)} → ${flat(after)}`;
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])];
  return changes(keys.map((k) => [words(k), flat(before[k]), flat(after[k])])) || 'no change';
}

function flat(value) {
  if (value === null || value === undefined) return '—';
  if (Array.isArray(value)) return value.map(flat).join(', ');
  if (typeof value === 'object') return Object.entries(value).map(([k, v]) => `${words(k)} ${flat(v)}`).join(', ');
  return String(value);
}
