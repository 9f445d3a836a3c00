"""Push to agents: what ``GET /v1/stream`` tells an agent at once (docs/push.md).

``events`` records the events in the admin action's own transaction and reads them back
(domain: no HTTP); ``hub`` fans one broker process's new events out to its open streams.
The HTTP side is ``broker/api/stream.py``; PostgreSQL's ``LISTEN`` is ``broker/store/listen.py``.
"""
