// The estate home (#/): purchases, a summary per licence type, and the admins.

import { confirmAndCall } from '../actions.js';
import { api, listAll, E } from '../api.js';
import { busy, clearError, copyText, el, errorBox, field, h1, say, section, showError, table } from '../dom.js';
import { fmtDate, noBreak, stateBadge } from '../format.js';
import { state } from '../state.js';

export async function homePage() {
  const [estate, purchases] = await Promise.all([api('GET', E()), listAll(E('/purchases'))]);
  const types = Object.entries(estate.summary.by_type).sort(([a], [b]) => a.localeCompare(b));
  return [
    h1(estate.name),
    el('p', { class: 'lead' }, 'Your licences, where they are, and who can manage them. ',
      el('a', { href: '#/pools' }, 'Open the pools'), ' to move licences and authenticate servers.'),
    section('Licences',
      table('Purchases', ['Sales order', 'Licence type', 'Count', 'Expires', 'State'],
        purchases.items.map((p) => [p.sales_order, p.licence_type, String(p.quantity), noBreak(fmtDate(p.expires_at)), stateBadge(p)]),
        'No licences have been recorded for this estate yet.')),
    section('Summary per licence type',
      table('Per licence type', ['Licence type', 'Total', 'In use', 'Available', 'Expiring soon', 'Unavailable'],
        types.map(([t, s]) => [t, String(s.total), String(s.in_use), String(s.available), String(s.expiring), String(s.unavailable)]),
        'No licences yet.')),
    adminsSection(estate.admins),
  ];
}

function adminsSection(admins) {
  const list = el('ul', { class: 'admins' });
  const errors = errorBox();
  const primary = state.me.primary;
  const draw = (items) => {
    list.replaceChildren(...items.map((a) => el('li', {},
      el('span', { class: 'admin-name' }, a.name),
      a.primary ? el('span', { class: 'badge badge-ok' }, 'primary') : null,
      a.id === state.me.admin_id ? el('span', { class: 'badge' }, 'you') : null,
      el('span', { class: 'muted' }, ` added ${fmtDate(a.created_at)}`),
      primary && !a.primary ? removeButton(a) : null)));
  };
  const reload = async () => draw((await listAll(E('/admins'))).items);
  const removeButton = (admin) => el('button', {
    type: 'button', class: 'small danger', 'aria-label': `Remove admin ${admin.name}`,
    on: {
      click: confirmAndCall({
        ask: {
          title: `Remove admin ${admin.name}?`,
          message: `${admin.name}'s token stops working at once, and any console session of theirs ends.`,
          confirm: 'Yes, remove',
        },
        errors,
        call: () => api('DELETE', E(`/admins/${encodeURIComponent(admin.id)}`)),
        done: async () => {
          await reload();
          say(`Admin ${admin.name} removed.`);
        },
      }),
    },
  }, 'Remove');
  draw(admins);
  const parts = [list, errors];
  if (primary) {
    const name = el('input', { type: 'text', maxlength: '64', autocomplete: 'off' });
    const result = el('div', { class: 'new-secret', hidden: true });
    const form = el('form', { class: 'inline-form', novalidate: true },
      field('New admin\'s name', name), el('button', { type: 'submit' }, 'Invite admin'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearError(errors);
      try {
        const created = await busy(form, () => api('POST', E('/admins'), { name: name.value.trim() }));
        name.value = '';
        const tokenField = el('input', { type: 'text', readonly: true, value: created.token, class: 'mono' });
        result.replaceChildren(
          el('p', {}, `Give ${created.name} this admin token through a safe channel. It is shown only now.`),
          field(`Admin token for ${created.name}`, tokenField),
          el('button', { type: 'button', on: { click: () => copyText(created.token, tokenField) } }, 'Copy token'));
        result.hidden = false;
        await reload();
        say(`Admin ${created.name} invited.`);
        tokenField.focus();
        tokenField.select();
      } catch (err) {
        showError(errors, err);
      }
    });
    parts.push(form, result);
  } else {
    parts.push(el('p', { class: 'muted' }, 'Only the primary admin can invite or remove admins.'));
  }
  return section('Admins', parts);
}
