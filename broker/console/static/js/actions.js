// The console's destructive actions (revoke a code, force-release a lease, remove a server
// or domain, delete a pool, remove an admin) all run the same way, so they share one
// helper: ask the admin in a dialog, call the broker only on "yes", then either show
// the broker's answer in the page's error box or let the page show the change.

import { clearError, confirmDialog, showError } from './dom.js';

/**
 * A click handler for a destructive action.
 *
 * ``ask`` is the dialog: ``{ title, message, confirm }`` (the confirm button's label).
 * When the admin dismisses it (Cancel, Escape) nothing is called and nothing changes.
 * When the admin confirms, ``errors`` (an ``errorBox()``) is cleared, ``call()`` runs,
 * then ``done()`` shows the outcome (re-render, navigate, announce). If either throws,
 * the error's message (the broker's problem detail) is shown as text in ``errors``.
 */
export function confirmAndCall({ ask, errors, call, done }) {
  return async () => {
    if (!(await confirmDialog(ask.title, ask.message, ask.confirm))) return;
    clearError(errors);
    try {
      await call();
      await done();
    } catch (err) {
      showError(errors, err);
    }
  };
}
