// Add pool (#/pools/new): a name and the licences to move from the Default Pool, in one step.

import { api, listAll, E } from '../api.js';
import { busy, clearError, el, errorBox, field, h1, showError } from '../dom.js';
import { markLacking, moveInputs, readMoves } from '../moves.js';
import { go } from '../router.js';

export async function addPoolPage() {
  const pools = (await listAll(E('/pools'))).items;
  const home = pools.find((p) => p.is_default);
  const name = el('input', { type: 'text', maxlength: '64', autocomplete: 'off', required: true });
  const rows = moveInputs(home ? home.holdings : [], 'the Default Pool');
  const errors = errorBox();
  const form = el('form', { class: 'card', novalidate: true },
    field('Pool name', name, 'For example a customer, a region or a use. 1–64 characters, unique in the estate.'),
    el('fieldset', {},
      el('legend', {}, 'Licences to move from the Default Pool'),
      rows.length
        ? rows.map((r) => field(r.label, r.input))
        : el('p', { class: 'empty' }, 'The Default Pool has no unused licences. You can create the pool now and move licences into it later.')),
    errors,
    el('button', { type: 'submit', class: 'primary' }, 'Create pool'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    name.removeAttribute('aria-invalid');
    let moves;
    try {
      if (!name.value.trim()) {
        name.setAttribute('aria-invalid', 'true');
        const err = new Error('Give the pool a name.');
        err.input = name;
        throw err;
      }
      moves = readMoves(rows);
    } catch (err) {
      showError(errors, err);
      err.input.focus();
      return;
    }
    try {
      const pool = await busy(form, () => api('POST', E('/pools'), { name: name.value.trim(), moves }));
      go(`#/pools/${pool.id}`, `Pool ${pool.name} created.`);
    } catch (err) {
      showError(errors, err);
      if (err.problem && err.problem.code === 'name_taken') name.setAttribute('aria-invalid', 'true');
      (markLacking(rows, err) || name).focus();
    }
  });
  return [
    h1('Add pool'),
    el('p', { class: 'lead' }, 'Name the pool and choose, per sales order, how many unused licences to move into it from the Default Pool. It is created in one step: if any number cannot be moved, nothing changes.'),
    form,
  ];
}
