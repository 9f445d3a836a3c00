// A pool (#/pools/<id>): its licences, servers and domains, leases, moves, policies,
// settings and deletion.

import { confirmAndCall } from '../actions.js';
import { api, listAll, E, P } from '../api.js';
import { busy, clearError, el, errorBox, field, h1, section, showError, table, uid } from '../dom.js';
import { counts, duration, fmtDate, fmtTime, fromNow, listOf, noBreak, plural, stateBadge } from '../format.js';
import { markLacking, moveInputs, readMoves } from '../moves.js';
import { forceReleaseNow, limitsSection, limitsText, newlyAdded, removeNow, softLockSection, windowsOn } from '../policies.js';
import { go, refresh } from '../router.js';
import { authenticate } from './auth-code.js';
import { fillBar, usageSection } from '../usage.js';

export async function poolPage(id) {
  const [pool, all, servers, leases] = await Promise.all([
    api('GET', P(id)), listAll(E('/pools')),
    listAll(E(`/servers?pool=${encodeURIComponent(id)}`)),
    api('GET', E(`/leases?pool=${encodeURIComponent(id)}&limit=500`)),
  ]);
  const others = all.items.filter((p) => p.id !== id);
  const codeErrors = errorBox();
  const authButton = el('button', { type: 'button', class: 'primary' }, 'Authenticate server/domain');
  authButton.addEventListener('click', async () => {
    clearError(codeErrors);
    try {
      authButton.disabled = true;
      await authenticate(id);
    } catch (err) {
      showError(codeErrors, err);
    } finally {
      authButton.disabled = false;
    }
  });
  return [
    h1(pool.name),
    el('p', { class: 'lead' }, counts(pool),
      pool.soft_locked ? ` / ${pool.soft_locked} soft-locked` : null,
      pool.reserved ? ` (${pool.reserved} reserved)` : null,
      '. ', `Lease lifetime ${duration(pool.lease_seconds)}.`,
      pool.is_default ? ' Every new purchase lands in this pool.' : null),
    pool.revoked_unexpired ? el('p', { class: 'notice' }, pool.revoked_unexpired === 1
      ? '1 seat freed by revocation still has a token that has not expired.'
      : `${pool.revoked_unexpired} seats freed by revocation still have tokens that have not expired.`) : null,
    fillBar(pool),
    el('div', { class: 'actions' }, authButton, el('a', { href: `#/pools/${id}/codes` }, 'Live codes')),
    codeErrors,
    usageSection(id),
    section('Licences',
      table('Licences held by this pool', ['Sales order', 'Licence type', 'Expires', 'State', 'Allocated', 'In use', 'Soft-locked', 'Unused'],
        pool.holdings.map((h) => [h.sales_order, h.licence_type, noBreak(fmtDate(h.expires_at)), stateBadge(h),
          String(h.allocated), String(h.in_use), String(h.soft_locked), String(h.unused)]),
        'This pool holds no licences. Move some in below.')),
    serversSection(pool, servers.items, others),
    leasesSection(pool, leases),
    softLockSection(pool),
    limitsSection(pool, servers.items),
    moveSection(pool, all.items),
    settingsSection(pool),
    deleteSection(pool, servers.items, leases.items.length),
  ];
}

function serversSection(pool, servers, others) {
  const errors = errorBox();
  const rows = servers.map((s) => {
    const actions = el('div', { class: 'row-actions' });
    if (others.length) {
      const select = el('select', { 'aria-label': `Pool for ${s.name}` },
        others.map((p) => el('option', { value: p.id }, p.name)));
      actions.append(select, el('button', {
        type: 'button', class: 'small', 'aria-label': `Move ${s.name} to the chosen pool`,
        on: {
          click: async () => {
            clearError(errors);
            try {
              await api('PATCH', E(`/servers/${encodeURIComponent(s.id)}`), { pool_id: select.value });
              refresh(`${s.name} now takes its licences from ${select.selectedOptions[0].textContent}.`);
            } catch (err) {
              showError(errors, err);
            }
          },
        },
      }, 'Move'));
    }
    actions.append(el('button', {
      type: 'button', class: 'small danger', 'aria-label': `Remove ${s.name}`,
      on: {
        click: confirmAndCall({
          ask: {
            title: `Remove ${s.kind} ${s.name}?`,
            message: `${freedNow(s.in_use)}Its token stops working, and the host needs a new code to come back.`,
            confirm: 'Yes, remove',
          },
          errors,
          call: () => api('DELETE', E(`/servers/${encodeURIComponent(s.id)}`)),
          done: () => refresh(windowsOn(pool) && s.in_use
            ? `${s.name} removed; its encoders' licences stay held for them while their soft-lock windows run.`
            : `${s.name} removed; its licences are free.`),
        }),
      },
    }, 'Remove'), windowsOn(pool) ? removeNow(s, errors) : null);
    return [s.name, s.kind === 'domain' ? 'Domain' : 'Server', s.last_seen_at ? `${fmtTime(s.last_seen_at)} (${fromNow(s.last_seen_at)})` : 'not yet',
      String(s.in_use), limitsText(s), actions];
  });
  return section('Servers and domains',
    table('Servers and domains of this pool', ['Name', 'Kind', 'Last check-in', 'Licences in use', 'Limits', 'Actions'], rows,
      'No server or domain is authenticated with this pool yet. Use “Authenticate server/domain” to make a code.'),
    errors);
}

/** The start of "remove this server?": what happens to the licences its encoders hold. */
function freedNow(inUse) {
  if (!inUse) return 'None of its encoders holds a licence. ';
  return `The ${plural(inUse, 'licence')} its encoders hold ${inUse === 1 ? 'is' : 'are'} freed at once. `;
}

function leasesSection(pool, page) {
  const errors = errorBox();
  const rows = page.items.map((l) => [l.encoder, l.server_name, l.licence_type, String(l.count),
    `${fmtTime(l.expires_at)} (${fromNow(l.expires_at)})`, newlyAdded(l),
    el('div', { class: 'row-actions' }, el('button', {
      type: 'button', class: 'small danger', 'aria-label': `Force-release ${l.encoder}`,
      on: {
        click: confirmAndCall({
          ask: {
            title: `Force-release ${l.encoder}?`,
            message: `Its ${plural(l.count, `${l.licence_type} licence`, `${l.licence_type} licences`)} `
              + `${l.count === 1 ? 'goes' : 'go'} back to the pool now. Its agent hears at once (if offline, `
              + `at its next renewal) and does not take ${l.count === 1 ? 'it' : 'them'} again on its own.`,
            confirm: 'Yes, release',
          },
          errors,
          call: () => api('DELETE', E(`/leases/${encodeURIComponent(l.id)}`)),
          done: () => refresh(l.soft_lock_until
            ? `${l.encoder}'s licences released; they stay held for it until ${fmtTime(l.soft_lock_until)}.`
            : `${l.encoder}'s licences released.`),
        }),
      },
    }, 'Force-release'), windowsOn(pool) ? forceReleaseNow(l, errors) : null)]);
  return section('Leases',
    table('Leases per encoder', ['Encoder', 'Server', 'Licence type', 'Count', 'Expires', 'Soft-lock', 'Action'], rows,
      'No encoder holds licences from this pool.'),
    page.next ? el('p', { class: 'muted' }, `Showing the first ${page.items.length} leases.`) : null,
    errors);
}

function moveSection(pool, pools) {
  const others = pools.filter((p) => p.id !== pool.id);
  if (!others.length) {
    return section('Move licences', el('p', { class: 'empty' }, 'There is no other pool to move licences to or from. ',
      el('a', { href: '#/pools/new' }, 'Add a pool'), ' first.'));
  }
  const dirName = uid('dir');
  const into = el('input', { type: 'radio', name: dirName, value: 'in', id: uid('f'), checked: true });
  const out = el('input', { type: 'radio', name: dirName, value: 'out', id: uid('f') });
  const other = el('select', {}, others.map((p) => el('option', { value: p.id }, p.name)));
  const home = others.find((p) => p.is_default);
  if (home) other.value = home.id;
  const items = el('div', { class: 'move-items' });
  const errors = errorBox();
  let rows = [];
  const drawItems = () => {
    const chosen = others.find((p) => p.id === other.value);
    const source = into.checked ? chosen : pool;
    rows = moveInputs(source.holdings, source.name);
    items.replaceChildren(...(rows.length
      ? rows.map((r) => field(r.label, r.input))
      : [el('p', { class: 'empty' }, `${source.name} has no unused licences to move.`)]));
  };
  into.addEventListener('change', drawItems);
  out.addEventListener('change', drawItems);
  other.addEventListener('change', drawItems);
  drawItems();
  const form = el('form', { class: 'card', novalidate: true },
    el('fieldset', { class: 'radios' }, el('legend', {}, 'Direction'),
      el('div', {}, into, el('label', { for: into.id }, `Into ${pool.name}`)),
      el('div', {}, out, el('label', { for: out.id }, `Out of ${pool.name}`))),
    field('Other pool', other),
    items, errors,
    el('button', { type: 'submit' }, 'Move licences'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    let moves;
    try {
      moves = readMoves(rows);
    } catch (err) {
      showError(errors, err);
      err.input.focus();
      return;
    }
    if (!moves.length) {
      showError(errors, new Error('Enter how many licences to move for at least one sales order.'));
      if (rows.length) rows[0].input.focus();
      return;
    }
    const [from, to] = into.checked ? [other.value, pool.id] : [pool.id, other.value];
    try {
      await busy(form, () => api('POST', E('/moves'), { from_pool: from, to_pool: to, items: moves }));
      const n = moves.reduce((sum, m) => sum + m.count, 0);
      refresh(`${plural(n, 'licence')} moved.`);
    } catch (err) {
      showError(errors, err);
      const bad = markLacking(rows, err);
      if (bad) bad.focus();
    }
  });
  return section('Move licences', el('p', {}, 'Only unused licences move. Choose the direction and the other pool, then how many per sales order.'), form);
}

function settingsSection(pool) {
  const errors = errorBox();
  const name = el('input', { type: 'text', maxlength: '64', value: pool.name, autocomplete: 'off' });
  const renameForm = el('form', { class: 'inline-form', novalidate: true },
    field('Name', name), el('button', { type: 'submit' }, 'Rename pool'));
  renameForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    try {
      const updated = await busy(renameForm, () => api('PATCH', P(pool.id), { name: name.value.trim() }));
      refresh(`Pool renamed to ${updated.name}.`);
    } catch (err) {
      showError(errors, err);
      name.focus();
    }
  });
  const seconds = el('input', { type: 'number', min: '60', max: String(30 * 86400), step: '1', value: String(pool.lease_seconds), inputmode: 'numeric' });
  const leaseForm = el('form', { class: 'inline-form', novalidate: true },
    field('Lease lifetime in seconds', seconds, `60 s to 30 days; now ${duration(pool.lease_seconds)}. Agents renew at a third of it; a revoked lease's token stays valid until it runs out.`),
    el('button', { type: 'submit' }, 'Save lease lifetime'));
  leaseForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    const n = Number(seconds.value);
    if (!Number.isInteger(n)) {
      showError(errors, new Error('Enter the lease lifetime as a whole number of seconds.'));
      seconds.focus();
      return;
    }
    try {
      const updated = await busy(leaseForm, () => api('PATCH', P(pool.id), { lease_seconds: n }));
      refresh(`Lease lifetime set to ${duration(updated.lease_seconds)}; new and renewed leases use it.`);
    } catch (err) {
      showError(errors, err);
      seconds.focus();
    }
  });
  return section('Settings', renameForm, leaseForm, errors);
}

function deleteSection(pool, servers, leases) {
  if (pool.is_default) {
    return section('Delete pool', el('p', {}, 'The Default Pool cannot be deleted: every purchase lands in it.'));
  }
  const domains = servers.filter((s) => s.kind === 'domain').length;
  const held = [[servers.length - domains, 'server'], [domains, 'domain'], [leases, 'lease']].filter(([n]) => n);
  if (held.length) {
    const one = held.length === 1 && held[0][0] === 1;
    return section('Delete pool', el('p', {},
      `This pool cannot be deleted while it has ${listOf(held.map(([n, noun]) => plural(n, noun)))}. `
      + `Remove or move ${one ? 'it' : 'them'} first.`));
  }
  const errors = errorBox();
  const button = el('button', {
    type: 'button', class: 'danger',
    on: {
      click: confirmAndCall({
        ask: {
          title: `Delete pool ${pool.name}?`,
          message: pool.allocated
            ? `Its ${plural(pool.allocated, 'licence')} ${pool.allocated === 1 ? 'goes' : 'go'} back to the Default Pool.`
            : 'It holds no licences.',
          confirm: 'Yes, delete',
        },
        errors,
        call: () => api('DELETE', P(pool.id)),
        done: () => go('#/pools', `Pool ${pool.name} deleted; its licences are back in the Default Pool.`),
      }),
    },
  }, 'Delete pool');
  return section('Delete pool', el('p', {}, `Its licences go back to the Default Pool.`), button, errors);
}
