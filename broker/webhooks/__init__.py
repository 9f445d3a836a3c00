"""Signed webhooks for an estate's admins (the Standard Webhooks convention).

- ``events``: the event types and ``emit``, which writes an event and one outbox row per
  subscribed endpoint inside the caller's transaction (so an event is sent if and only if
  its change committed), plus the once-only marks that keep expiry and pool.exhausted
  events from repeating.
- ``endpoints``: create, list, delete, rotate a secret; the secret sealed at rest.
- ``signing``: the ``webhook-*`` headers.
- ``guard``: which URLs and addresses may be sent to (no server-side request forgery).
- ``delivery``: the loop that claims due outbox rows, sends them and records each attempt.
- ``scheduler``: the expiry events (``purchase.expiring``, ``.expired``, ``.grace_ended``).
- ``runtime``: what each broker process runs (the dispatcher and scheduler loops, the
  purge, and ``pool.exhausted`` after a refused acquire).

docs/events.md is the receiver's side; docs/design.md ("Webhooks") the rules.
"""
