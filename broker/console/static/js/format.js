// How times, durations, counts, codes and purchase states read on the page.

import { el } from './dom.js';

export const fmtTime = (ts) => (ts ? `${ts.slice(0, 10)} ${ts.slice(11, 16)} UTC` : 'never');
export const fmtDate = (ts) => ts.slice(0, 10);

export function duration(seconds) {
  const s = Math.abs(Math.round(seconds));
  if (s >= 86400 && s % 86400 === 0) return `${s / 86400} d`;
  if (s >= 3600 && s % 3600 === 0) return `${s / 3600} h`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  if (s >= 60 && s % 60 === 0) return `${s / 60} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${s} s`;
}

export function fromNow(ts) {
  const seconds = (Date.parse(ts) - Date.now()) / 1000;
  if (Math.abs(seconds) < 5) return 'just now';
  const rounded = Math.abs(seconds) >= 120 ? Math.round(seconds / 60) * 60 : Math.round(seconds);
  return seconds >= 0 ? `in ${duration(rounded)}` : `${duration(rounded)} ago`;
}

/** ``text`` (a date, a time) kept on one line: "2026-11-30" must not break at its dashes. */
export const noBreak = (text) => el('span', { class: 'nowrap' }, text);

/**
 * ``n`` and the noun that agrees with it: ``plural(1, 'server')`` is "1 server",
 * ``plural(2, 'server')`` "2 servers"; ``many`` for nouns that do not just take an s.
 */
export const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** "a", "a and b", "a, b and c" (British: no comma before "and"). */
export function listOf(items) {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}`;
}

export const counts = (c) => `${c.allocated} allocated / ${c.in_use} in use / ${c.available} available`;
export const groupCode = (code) => `${code.slice(0, 4)} ${code.slice(4)}`;

export function stateBadge(item) {
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
