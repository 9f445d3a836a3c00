"""The container's HEALTHCHECK: exit 0 when the broker in this container answers
``GET /healthz`` with 200, else 1.

It asks over HTTPS when the broker terminates TLS itself (``TENURE_TLS_CERT`` set), on
the port the image's entrypoint gives (8400, or ``TENURE_HEALTHCHECK_PORT``). The
certificate is not checked against a name: the probe goes to 127.0.0.1, inside the
container, and only asks whether the broker answers.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = int(os.environ.get("TENURE_HEALTHCHECK_PORT", "8400"))
    context = None
    scheme = "http"
    if os.environ.get("TENURE_TLS_CERT"):
        scheme = "https"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{scheme}://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as answer:  # noqa: S310 - a fixed local URL
            return 0 if answer.status == 200 else 1
    except (OSError, urllib.error.URLError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
