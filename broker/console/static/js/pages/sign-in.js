// The sign-in form: an admin token exchanged for a session cookie; the page keeps no token.

import { call } from '../api.js';
import { busy, clearError, el, errorBox, field, h1, main, say, showError } from '../dom.js';

/**
 * Show the sign-in form (with ``message`` above it) in <main>; ``begin(session)`` once
 * signed in. session.js's showSignIn calls it, having put the pages and top bar away.
 */
export function signInPage(message, begin) {
  document.title = 'Sign in · Tenure console';
  const input = el('input', {
    type: 'text', name: 'admin-token', class: 'secret', autocomplete: 'off',
    autocapitalize: 'off', spellcheck: 'false', required: true,
  });
  const errors = errorBox();
  const form = el('form', { class: 'signin card', novalidate: true },
    h1('Sign in to the Tenure console'),
    message ? el('p', { class: 'notice' }, message) : null,
    field('Admin token', input, 'Your estate admin token (tnr_adm_…). The broker exchanges it for a session cookie; the page does not keep it.'),
    errors,
    el('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    const token = input.value.trim();
    if (!token) {
      showError(errors, new Error('Enter your admin token.'));
      input.focus();
      return;
    }
    try {
      const session = await busy(form, () => call('POST', '/console/session', { token }));
      input.value = '';
      say('');
      await begin(session);
    } catch (err) {
      showError(errors, err);
      input.focus();
    }
  });
  main.replaceChildren(form);
  main.querySelector('h1').focus();
}
