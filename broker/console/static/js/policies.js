// A pool's licence policies, on its page: the soft-lock windows (with the reference
// product's values as a preset), the seats they hold and for whom, the override on
// force-release and removal, and each server's or domain's limits and reservations,
// checked here before they are sent.

import { confirmAndCall } from './actions.js';
import { api, E, P } from './api.js';
import { busy, clearError, el, errorBox, field, section, showError, table } from './dom.js';
import { duration, fmtTime, fromNow, plural } from './format.js';
import { refresh } from './router.js';

const MAX_WINDOW = 90 * 86400;
export const PRESET = { hardware: 45 * 86400, container: 30 * 60 };

export const windowsOn = (pool) => Boolean(pool.soft_lock_seconds.hardware || pool.soft_lock_seconds.container);

/** A whole number from ``lo`` to ``hi`` in ``input``, or an Error naming ``what``. */
function wholeNumber(input, what, lo, hi) {
  const text = input.value.trim();
  const n = Number(text);
  if (text === '' || !Number.isInteger(n) || n < lo || n > hi) {
    input.setAttribute('aria-invalid', 'true');
    const err = new Error(`${what} must be a whole number from ${lo} to ${hi}.`);
    err.input = input;
    throw err;
  }
  input.removeAttribute('aria-invalid');
  return n;
}

export function softLockSection(pool) {
  const errors = errorBox();
  const now = pool.soft_lock_seconds;
  const hardware = el('input', { type: 'number', min: '0', max: String(MAX_WINDOW), step: '1', value: String(now.hardware), inputmode: 'numeric' });
  const container = el('input', { type: 'number', min: '0', max: String(MAX_WINDOW), step: '1', value: String(now.container), inputmode: 'numeric' });
  const save = async (form, seconds) => {
    const updated = await busy(form, () => api('PATCH', P(pool.id), { soft_lock_seconds: seconds }));
    const s = updated.soft_lock_seconds;
    refresh(s.hardware || s.container
      ? `Soft-lock windows set: ${windowText(s.hardware)} for hardware encoders, ${windowText(s.container)} for containers.`
      : 'Soft-lock is off: seats given back are free at once.');
  };
  const form = el('form', { class: 'inline-form', novalidate: true },
    field('Hardware encoders, in seconds', hardware, `0 (off) to 90 days; now ${windowText(now.hardware)}.`),
    field('Containers, in seconds', container, `0 (off) to 90 days; now ${windowText(now.container)}.`),
    el('button', { type: 'submit' }, 'Save soft-lock windows'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    try {
      const seconds = {
        hardware: wholeNumber(hardware, 'The hardware window', 0, MAX_WINDOW),
        container: wholeNumber(container, 'The container window', 0, MAX_WINDOW),
      };
      await save(form, seconds);
    } catch (err) {
      showError(errors, err);
      (err.input || hardware).focus();
    }
  });
  const preset = el('button', { type: 'button' }, '45 days for hardware, 30 minutes for containers');
  preset.addEventListener('click', async () => {
    clearError(errors);
    hardware.value = String(PRESET.hardware);
    container.value = String(PRESET.container);
    try {
      await save(form, PRESET);
    } catch (err) {
      showError(errors, err);
    }
  });
  return section('Soft-lock',
    el('p', {}, 'From an encoder’s first licence in this pool, seats it gives back stay held for it until its '
      + 'window ends: other encoders cannot take them and they cannot be moved. Shortening a window frees '
      + 'at once what it no longer covers.'),
    form, el('div', { class: 'actions' }, preset),
    heldSeats(pool, errors), errors);
}

const windowText = (s) => (s ? duration(s) : 'off');

function heldSeats(pool, errors) {
  const rows = pool.soft_locks.map((h) => [h.encoder, h.kind === 'container' ? 'Container' : 'Hardware',
    h.licence_type, String(h.count), `${fmtTime(h.until)} (${fromNow(h.until)})`,
    el('button', {
      type: 'button', class: 'small danger', 'aria-label': `Free the seats held for ${h.encoder}`,
      on: {
        click: confirmAndCall({
          ask: {
            title: `Free the seats held for ${h.encoder}?`,
            message: `${plural(h.count, 'seat')} held until ${fmtTime(h.until)} become available to every encoder now. `
              + 'The override is recorded in the audit log.',
            confirm: 'Yes, free them',
          },
          errors,
          call: () => api('DELETE', E(`/leases/${encodeURIComponent(h.lease_id)}?override_soft_lock=true`)),
          done: () => refresh(`The seats held for ${h.encoder} are free.`),
        }),
      },
    }, 'Free now')]);
  return table('Seats held for encoders', ['Encoder', 'Kind', 'Licence type', 'Seats', 'Held until', 'Action'], rows,
    'No seats are held for encoders.');
}

/** The "Force-release now" button of a lease: releases it and frees its held seats at once. */
export function forceReleaseNow(lease, errors) {
  return el('button', {
    type: 'button', class: 'small danger', 'aria-label': `Force-release ${lease.encoder} and free its seats now`,
    on: {
      click: confirmAndCall({
        ask: {
          title: `Force-release ${lease.encoder} and free its seats now?`,
          message: 'Its licences, and any seats held for it, become available to every encoder at once, '
            + 'overriding the soft-lock. The override is recorded in the audit log.',
          confirm: 'Yes, release and free',
        },
        errors,
        call: () => api('DELETE', E(`/leases/${encodeURIComponent(lease.id)}?override_soft_lock=true`)),
        done: () => refresh(`${lease.encoder}'s licences released and free now.`),
      }),
    },
  }, 'Force-release now');
}

/** The "Remove now" button of a server: removes it and frees its encoders' seats at once. */
export function removeNow(server, errors) {
  return el('button', {
    type: 'button', class: 'small danger', 'aria-label': `Remove ${server.name} and free its seats now`,
    on: {
      click: confirmAndCall({
        ask: {
          title: `Remove ${server.kind} ${server.name} and free its seats now?`,
          message: 'Its token stops working, and the licences its encoders hold, with any seats held for them, '
            + 'become available at once, overriding the soft-lock. The override is recorded in the audit log.',
          confirm: 'Yes, remove and free',
        },
        errors,
        call: () => api('DELETE', E(`/servers/${encodeURIComponent(server.id)}?override_soft_lock=true`)),
        done: () => refresh(`${server.name} removed; its licences are free now.`),
      }),
    },
  }, 'Remove now');
}

/** "Newly added until …" while the encoder's window is open. */
export const newlyAdded = (lease) => (lease.soft_lock_until ? `Newly added until ${fmtTime(lease.soft_lock_until)}` : '—');

export function limitsSection(pool, servers) {
  const types = Object.keys(pool.by_type).sort();
  if (!servers.length || !types.length) {
    return section('Limits and reservations', el('p', { class: 'empty' },
      'Limits are set per server or domain and licence type, once the pool has both.'));
  }
  return section('Limits and reservations',
    el('p', {}, 'Max caps the licences a server’s encoders hold together. Reserved keeps that many of this pool’s '
      + 'licences for it: other servers cannot take them and they cannot be moved out.'),
    servers.map((s) => limitsForm(pool, s, types)));
}

function limitsForm(pool, server, types) {
  const errors = errorBox();
  const inputs = types.map((t) => {
    const now = server.limits[t] || { max: null, reserved: 0 };
    const max = el('input', { type: 'number', min: '0', step: '1', inputmode: 'numeric', value: now.max === null ? '' : String(now.max) });
    const reserved = el('input', { type: 'number', min: '0', step: '1', inputmode: 'numeric', value: now.reserved ? String(now.reserved) : '' });
    return { type: t, max, reserved };
  });
  const form = el('form', { class: 'card', novalidate: true },
    el('fieldset', {}, el('legend', {}, `${server.name} (${server.kind})`),
      inputs.map((i) => el('div', { class: 'inline-form' },
        field(`Max ${i.type} for ${server.name}`, i.max, 'Blank: no cap.'),
        field(`Reserved ${i.type} for ${server.name}`, i.reserved, 'Blank: none.')))),
    errors,
    el('button', { type: 'submit', 'aria-label': `Save limits of ${server.name}` }, 'Save limits'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    let limits;
    try {
      limits = readLimits(pool, server, inputs);
    } catch (err) {
      showError(errors, err);
      err.input.focus();
      return;
    }
    try {
      await busy(form, () => api('PATCH', E(`/servers/${encodeURIComponent(server.id)}`), { limits }));
      refresh(`Limits of ${server.name} saved.`);
    } catch (err) {
      showError(errors, err);
    }
  });
  return form;
}

/** The PATCH body's ``limits``, checked as the broker would check them. */
function readLimits(pool, server, inputs) {
  const limits = {};
  for (const i of inputs) {
    const max = i.max.value.trim() === '' ? null : wholeNumber(i.max, `Max ${i.type}`, 0, 10000000);
    const reserved = i.reserved.value.trim() === '' ? 0 : wholeNumber(i.reserved, `Reserved ${i.type}`, 0, 10000000);
    if (max !== null && reserved > max) {
      i.reserved.setAttribute('aria-invalid', 'true');
      const err = new Error(`Reserved ${i.type} (${reserved}) cannot be more than its max (${max}).`);
      err.input = i.reserved;
      throw err;
    }
    const others = pool.limits.filter((l) => l.licence_type === i.type && l.server_id !== server.id)
      .reduce((sum, l) => sum + l.reserved, 0);
    const holding = pool.by_type[i.type].allocated;
    if (reserved && others + reserved > holding) {
      i.reserved.setAttribute('aria-invalid', 'true');
      const err = new Error(`Reservations of ${i.type} would come to ${others + reserved}, but the pool holds ${holding}.`);
      err.input = i.reserved;
      throw err;
    }
    limits[i.type] = max === null && !reserved ? null : { ...(max === null ? {} : { max }), reserved };
  }
  return limits;
}

/** A server's limits as one line, for the servers table. */
export function limitsText(server) {
  const parts = Object.entries(server.limits).map(([t, l]) => {
    const bits = [l.max === null ? null : `max ${l.max}`, l.reserved ? `${l.reserved} reserved` : null].filter(Boolean);
    return `${t}: ${bits.join(', ') || 'none'}`;
  });
  return parts.length ? parts.join('; ') : 'None';
}
