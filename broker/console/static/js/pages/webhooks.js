// Webhooks (#/webhooks): the estate's endpoints, flagged when they keep failing, and the
// form that adds one (its signing secret is shown once, right after). One endpoint's page
// (#/webhooks/<id>) lists its delivery attempts and sends a test event, rotates the
// secret or deletes the endpoint.

import { confirmAndCall } from '../actions.js';
import { api, listAll, E } from '../api.js';
import { busy, clearError, copyText, el, errorBox, field, h1, say, section, showError, table } from '../dom.js';
import { fmtTime, listOf, noBreak, plural } from '../format.js';
import { go, refresh } from '../router.js';

const EVENT_TYPES = [
  ['purchase.expiring', 'A purchase expires in 30 days'],
  ['purchase.expired', 'A purchase expired'],
  ['purchase.grace_ended', 'A purchase\'s grace period ended'],
  ['pool.exhausted', 'A pool ran out of licences'],
  ['lease.lapsed', 'A lease lapsed'],
  ['server.enrolled', 'A server or domain was authenticated'],
  ['server.removed', 'A server or domain was removed'],
  ['code.redeemed', 'An authentication code was used'],
];
let justMade = null; // the endpoint just added, whose secret the next drawing shows once
const W = (id, rest = '') => E(`/webhooks/${encodeURIComponent(id)}${rest}`);

function health(hook) {
  if (hook.failing) return el('span', { class: 'badge badge-bad' }, `Failing (${plural(hook.failures, 'failed attempt')})`);
  if (hook.last_success_at) return el('span', { class: 'badge badge-ok' }, 'Delivering');
  return el('span', { class: 'badge' }, 'No deliveries yet');
}

export async function webhooksPage() {
  const hooks = (await listAll(E('/webhooks'))).items;
  const failing = hooks.filter((h) => h.failing);
  let secretBox = null;
  if (justMade) {
    secretBox = el('div', { class: 'new-secret' });
    showSecret(secretBox, justMade.secret, `Configure the receiver at ${justMade.url} with this signing secret. It is shown only now.`);
    justMade = null;
  }
  return [
    h1('Webhooks'),
    el('p', { class: 'lead' }, 'Tenure POSTs signed events (Standard Webhooks) to these HTTPS endpoints: expiring '
      + 'purchases, pools that ran out, lapsed leases, servers authenticated or removed.'),
    secretBox,
    failing.length ? el('p', { class: 'error', role: 'alert' },
      `${plural(failing.length, 'endpoint keeps', 'endpoints keep')} failing: ${listOf(failing.map((h) => h.url))}. `
      + 'Open it to see why.') : null,
    section('Endpoints',
      table('Webhook endpoints', ['Endpoint', 'Events', 'Status', 'Last delivered'],
        hooks.map((h) => [el('a', { href: `#/webhooks/${h.id}`, class: 'mono' }, h.url), h.events.join(', '), health(h),
          noBreak(fmtTime(h.last_success_at))]),
        'No webhook endpoints yet.')),
    addSection(),
  ];
}

function addSection() {
  const url = el('input', { type: 'url', maxlength: '2048', autocomplete: 'off', placeholder: 'https://', required: true });
  const boxes = EVENT_TYPES.map(([value, text]) => {
    const box = el('input', { type: 'checkbox', value });
    return [box, el('div', { class: 'check' }, el('label', {}, box, ` ${text} (${value})`))];
  });
  const errors = errorBox();
  const form = el('form', { novalidate: true },
    field('Endpoint URL', url),
    el('fieldset', {}, el('legend', {}, 'Event types'), boxes.map(([, row]) => row)),
    el('button', { type: 'submit' }, 'Add endpoint'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    const events = boxes.filter(([box]) => box.checked).map(([box]) => box.value);
    try {
      const made = await busy(form, () => api('POST', E('/webhooks'), { url: url.value.trim(), events }));
      justMade = made;
      await refresh(`Endpoint ${made.url} added. Copy its signing secret now: it is shown only once.`);
    } catch (err) {
      showError(errors, err);
    }
  });
  return section('Add endpoint', form, errors);
}

function showSecret(box, secret, message) {
  const secretField = el('input', { type: 'text', readonly: true, value: secret, class: 'mono', size: '60' });
  box.replaceChildren(el('p', {}, message), field('Signing secret', secretField),
    el('button', { type: 'button', on: { click: () => copyText(secret, secretField) } }, 'Copy secret'));
  box.hidden = false;
}

export async function webhookPage(id) {
  const [hook, attempts] = await Promise.all([api('GET', W(id)), api('GET', W(id, '/deliveries?limit=100'))]);
  const errors = errorBox();
  const secretBox = el('div', { class: 'new-secret', hidden: true });
  const test = el('button', {
    type: 'button',
    on: {
      click: async () => {
        clearError(errors);
        try {
          await api('POST', W(id, '/test'), {});
          await new Promise((resolve) => { setTimeout(resolve, 1500); }); // the broker sends at once
          await refresh('Test event sent; its delivery is listed below.');
        } catch (err) {
          showError(errors, err);
        }
      },
    },
  }, 'Send test event');
  const rotate = el('button', {
    type: 'button',
    on: {
      click: confirmAndCall({
        ask: {
          title: 'Rotate the signing secret?',
          message: 'A new secret signs from now on; for 24 hours the old one signs too, so that you can switch your receiver over.',
          confirm: 'Yes, rotate',
        },
        errors,
        call: async () => {
          const rotated = await api('POST', W(id, '/rotate-secret'), {});
          showSecret(secretBox, rotated.secret, 'The new signing secret. It is shown only now.');
        },
        done: async () => say('Secret rotated.'),
      }),
    },
  }, 'Rotate secret');
  const remove = el('button', {
    type: 'button',
    class: 'danger',
    on: {
      click: confirmAndCall({
        ask: { title: 'Delete this endpoint?', message: `${hook.url} gets no more events.`, confirm: 'Yes, delete' },
        errors,
        call: () => api('DELETE', W(id)),
        done: async () => go('#/webhooks', 'Endpoint deleted.'),
      }),
    },
  }, 'Delete endpoint');
  const d = attempts.deliveries;
  return [
    h1('Webhook endpoint'),
    el('p', { class: 'mono' }, hook.url),
    el('p', {}, 'Events: ', hook.events.join(', '), '. ', health(hook)),
    hook.failing ? el('p', { class: 'error', role: 'alert' },
      `This endpoint keeps failing: ${plural(hook.failures, 'attempt')} in a row have failed. The latest error is below.`) : null,
    el('div', { class: 'actions' }, test, ' ', rotate, ' ', remove),
    errors,
    secretBox,
    section('Deliveries',
      el('p', {}, `${d.delivered} delivered, ${d.pending} waiting or retrying, ${d.failed} given up.`),
      table('Delivery attempts', ['Time', 'Event', 'Attempt', 'Result', 'Status code', 'Latency', 'Error'],
        attempts.items.map((a) => [noBreak(fmtTime(a.at)), a.event_type, String(a.attempt), a.outcome,
          a.status_code === null ? '—' : String(a.status_code), `${a.latency_ms} ms`, a.error || '']),
        'Nothing has been sent to this endpoint yet.')),
    el('p', {}, el('a', { href: '#/webhooks' }, 'All webhook endpoints')),
  ];
}
