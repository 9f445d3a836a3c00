// The per-sales-order count fields shared by "Add pool" and a pool's "Move licences".

import { el } from './dom.js';

function countInput(max) {
  return el('input', { type: 'number', min: '0', max: String(max), step: '1', value: '0', inputmode: 'numeric', class: 'count' });
}

const STATE_NOTE = { expiring: ' (expiring)', expired: ' (expired)', ended: ' (ended)', on_hold: ' (on hold)' };

/** The per-purchase count inputs of a move form: [{holding, input}]. */
export function moveInputs(holdings, poolName) {
  return holdings.filter((h) => h.unused > 0).map((h) => ({
    holding: h,
    input: countInput(h.unused),
    label: `${h.sales_order} · ${h.licence_type} — ${h.unused} unused in ${poolName}${STATE_NOTE[h.state] || ''}`,
  }));
}

/** The move items the form asks for; throws (with the input to focus) on a bad number. */
export function readMoves(rows) {
  const items = [];
  for (const { holding, input } of rows) {
    input.removeAttribute('aria-invalid');
    const text = input.value.trim();
    if (text === '' || text === '0') continue;
    const n = Number(text);
    if (!Number.isInteger(n) || n < 0) {
      input.setAttribute('aria-invalid', 'true');
      const err = new Error(`Enter a whole number of licences for sales order ${holding.sales_order}.`);
      err.input = input;
      throw err;
    }
    if (n > 0) items.push({ purchase_id: holding.purchase_id, count: n });
  }
  return items;
}

export function markLacking(rows, err) {
  const lacking = new Set(((err.problem && err.problem.items) || []).map((i) => i.purchase_id));
  let first = null;
  for (const { holding, input } of rows) {
    if (lacking.has(holding.purchase_id)) {
      input.setAttribute('aria-invalid', 'true');
      first = first || input;
    }
  }
  return first;
}
