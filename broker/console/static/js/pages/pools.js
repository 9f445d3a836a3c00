// See all pools (#/pools): every pool with its counts, as a whole and per licence type.

import { listAll, E } from '../api.js';
import { el, h1 } from '../dom.js';
import { counts } from '../format.js';
import { fillBar } from '../usage.js';

export async function poolsPage() {
  const pools = (await listAll(E('/pools'))).items;
  return [
    h1('Pools'),
    el('p', { class: 'lead' }, 'Every pool with its licences: allocated / in use / available. Open a pool to manage it.'),
    el('ul', { class: 'pool-list' }, pools.map((pool) => el('li', { class: 'card pool-card' },
      el('a', { href: `#/pools/${pool.id}`, class: 'pool-link' },
        el('span', { class: 'pool-name' }, pool.name), ' ', el('span', { class: 'pool-counts' }, counts(pool))),
      pool.is_default ? el('span', { class: 'badge' }, 'Default') : null,
      fillBar(pool),
      el('ul', { class: 'by-type' }, Object.entries(pool.by_type).sort(([a], [b]) => a.localeCompare(b))
        .map(([type, c]) => el('li', {}, el('span', { class: 'type' }, type), ` ${counts(c)}`))),
      pool.revoked_unexpired ? el('p', { class: 'muted' }, pool.revoked_unexpired === 1
        ? '1 freed seat still has an unexpired token.'
        : `${pool.revoked_unexpired} freed seats still have unexpired tokens.`) : null))),
  ];
}
