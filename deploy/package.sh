#!/usr/bin/env bash
# Build the Debian 12 (bookworm) packages of the agent and the broker:
#   dist/tenure-agent_VERSION_ARCH.deb and dist/tenure-broker_VERSION_ARCH.deb
#
#   bash deploy/package.sh            # from the repository root, on Debian 12
#
# Each package is self-contained: a Python environment of its own in /usr/lib/PACKAGE
# (on Debian's python3.11) with every dependency at the version deploy/constraints.txt
# names, so installing it fetches nothing. It brings /usr/bin/PACKAGE, the systemd unit,
# the service user (made by postinst), the state directory, an example configuration
# under /etc (a conffile: dpkg keeps your edits), and the docs in /usr/share/doc/PACKAGE.
# `apt-get remove` leaves configuration and data; `apt-get purge` removes those and the
# service user too.
#
# Building needs Debian's python3.11 with python3-venv, dpkg-deb, and PyPI for the
# dependencies' wheels (only here, never at install). tests/deploy/test_packages.py
# builds both, runs lintian, and installs them into a clean Debian 12 root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

python=${TENURE_PACKAGE_PYTHON:-/usr/bin/python3.11}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' shared/__init__.py)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || { echo "package.sh: no __version__ in shared/__init__.py" >&2; exit 1; }
[ -x "$python" ] || { echo "package.sh: $python is missing (apt-get install python3.11-venv)" >&2; exit 1; }

# Reproducible dates: the last commit's, when there is one.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
maintainer="Tenure maintainers <tenure@example.net>"
# xz's level for the .deb files: dpkg-deb's own default, 6, unless told. The tests build
# with 1 (a fifth of the time, 12 % larger): the contents are the same.
xz_level=${TENURE_PACKAGE_XZ_LEVEL:-6}
case "$xz_level" in [0-9]) ;; *) echo "package.sh: TENURE_PACKAGE_XZ_LEVEL must be 0-9" >&2; exit 1 ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One wheel of the project, built from a copy of the tracked (and new, not ignored)
# files: a stale build/ or *.egg-info in the work tree must not leak into it.
mkdir -p "$work/src" "$work/wheels"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work/src"
else
  tar --exclude=.venv --exclude=.git --exclude=dist --exclude=build --exclude='*.egg-info' -cf - . | tar -xf - -C "$work/src"
fi
"$python" -m venv "$work/tools"
"$work/tools/bin/pip" install -q --disable-pip-version-check -c deploy/constraints.txt --upgrade pip >/dev/null
"$work/tools/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$work/wheels" "$work/src"
wheel=$(ls "$work/wheels"/tenure-"$version"-*.whl)

mkdir -p dist

# build PACKAGE COMMAND UNIT CONFIG_SOURCE CONFIG_TARGET SUMMARY DESCRIPTION DOCS...
build() {
  local pkg=$1 command=$2 unit=$3 config_source=$4 config_target=$5 summary=$6 description=$7
  shift 7
  local stage="$work/$pkg"
  local prefix="/usr/lib/$pkg"
  local venv="$stage$prefix"

  # The Python environment, made where it will live (then moved into the package's tree
  # with its paths rewritten): Debian's python3.11, the project, pinned dependencies.
  # No pip of its own (the package would not use it): the build's pip installs into it.
  "$python" -m venv --without-pip "$venv"
  # The broker carries the PostgreSQL driver too (tenure[postgres]): replicas need it.
  local requirement=$wheel
  [ "$pkg" = tenure-broker ] && requirement="$wheel[postgres]"
  "$work/tools/bin/pip" --python "$venv/bin/python" install -q --disable-pip-version-check --no-compile \
    -c deploy/constraints.txt "$requirement"
  rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
  find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +
  if command -v strip >/dev/null; then
    find "$venv" -name '*.so' -exec strip --strip-unneeded {} +
  fi
  # Shared libraries are not programs (lintian: shared-library-is-executable); wheels such
  # as psycopg-binary's bundle theirs (libpq and its own) with mode 0755.
  find "$venv" -type f \( -name '*.so' -o -name '*.so.*' \) -exec chmod 0644 {} +
  sed -i "s|$venv|$prefix|g" "$venv/pyvenv.cfg"
  # Console scripts name the interpreter by its build path: give them the installed one.
  for script in "$venv"/bin/*; do
    if [ -f "$script" ] && [ ! -L "$script" ] && head -c 2 "$script" | grep -q '#!'; then
      sed -i "1s|^#!.*python.*$|#!$prefix/bin/python|" "$script"
    fi
  done
  # Only this package's command: other console scripts (the other program's, the
  # dependencies' own) would not belong here. The interpreter's links stay, relative.
  for other in "$venv"/bin/*; do
    case "$(basename "$other")" in
      "$command") ;;
      python | python3 | python3.11) [ -L "$other" ] && ln -sfn ../../../bin/python3.11 "$other" ;;
      *) rm -f "$other" ;;
    esac
  done
  mkdir -p "$stage/usr/bin"
  ln -s "../lib/$pkg/bin/$command" "$stage/usr/bin/$command"

  install -D -m 0644 "deploy/systemd/$unit" "$stage/lib/systemd/system/$unit"
  install -D -m 0644 "$config_source" "$stage$config_target"

  local doc="$stage/usr/share/doc/$pkg"
  mkdir -p "$doc"
  for file in "$@"; do
    install -m 0644 "docs/$file" "$doc/$file"
  done
  install -m 0644 README.md "$doc/README.md"
  if [ "$pkg" = tenure-broker ]; then  # what an operator adapts: the proxy, the alerts
    install -D -m 0644 deploy/nginx/tenure.conf "$doc/examples/nginx-tenure.conf"
    install -D -m 0644 deploy/prometheus/tenure-alerts.yml "$doc/examples/tenure-alerts.yml"
  fi
  cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tenure
Comment: $pkg carries its Python dependencies in $prefix/lib/python3.11/site-packages;
 each one's licence is in its *.dist-info directory there.

Files: *
Copyright: 2026 The Tenure authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
  {
    echo "$pkg ($version) bookworm; urgency=medium"
    echo
    echo "  * Built by deploy/package.sh from the Tenure repository."
    echo
    echo " -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
  } | gzip -9n > "$doc/changelog.gz"
  chmod 0644 "$doc/changelog.gz" "$doc/copyright"

  # Packaging metadata and maintainer scripts.
  mkdir -p "$stage/DEBIAN"
  echo "$config_target" > "$stage/DEBIAN/conffiles"
  local size
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  cat > "$stage/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: python3.11, libc6, adduser
Section: net
Priority: optional
Homepage: https://example.net/tenure
Description: $summary
$(echo "$description" | fold -s -w 78 | sed 's/ *$//; s/^/ /')
EOF
  local state="/var/lib/$pkg" service
  service=$unit
  cat > "$stage/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
    if ! getent passwd $pkg >/dev/null; then
        adduser --system --group --home $state --no-create-home --quiet $pkg
    fi
    install -d -m 0700 -o $pkg -g $pkg $state
    # Byte-code once here: the service's user cannot write it next to the modules.
    $prefix/bin/python -m compileall -q $prefix/lib >/dev/null 2>&1 || true
fi
if [ "\$1" = configure ] || [ "\$1" = abort-upgrade ] || [ "\$1" = abort-deconfigure ] || [ "\$1" = abort-remove ]; then
    deb-systemd-helper unmask '$service' >/dev/null || true
    if deb-systemd-helper --quiet was-enabled '$service'; then
        deb-systemd-helper enable '$service' >/dev/null || true
    else
        deb-systemd-helper update-state '$service' >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "\$2" ]; then action=restart; else action=start; fi
        deb-systemd-invoke \$action '$service' >/dev/null || true
    fi
fi
exit 0
EOF
  cat > "$stage/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
    deb-systemd-invoke stop '$service' >/dev/null || true
fi
# The byte-code postinst made is not dpkg's to remove.
find $prefix -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
EOF
  cat > "$stage/DEBIAN/postrm" <<EOF
#!/bin/sh
set -e
if [ "\$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "\$1" = remove ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask '$service' >/dev/null || true
fi
if [ "\$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge '$service' >/dev/null || true
        deb-systemd-helper unmask '$service' >/dev/null || true
    fi
    rm -rf $state
    if getent passwd $pkg >/dev/null && command -v deluser >/dev/null; then
        deluser --system --quiet $pkg >/dev/null 2>&1 || true
    fi
    if getent group $pkg >/dev/null && command -v delgroup >/dev/null; then
        delgroup --system --quiet $pkg >/dev/null 2>&1 || true
    fi
fi
exit 0
EOF
  chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"
  chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles"

  # Modes as Debian wants them, whatever the umask was; then checksums.
  find "$stage" -path "$stage/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
  find "$stage" -path "$stage/DEBIAN" -prune -o -type f -perm /111 -exec chmod 0755 {} +
  find "$stage" -path "$stage/DEBIAN" -prune -o -type f ! -perm /111 -exec chmod 0644 {} +
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
    > "$stage/DEBIAN/md5sums"
  chmod 0644 "$stage/DEBIAN/md5sums"
  find "$stage" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0 touch -h -d "@$SOURCE_DATE_EPOCH"

  dpkg-deb --root-owner-group -Zxz -z"$xz_level" --build "$stage" "dist/${pkg}_${version}_${arch}.deb" >/dev/null
  echo "dist/${pkg}_${version}_${arch}.deb"
}

build tenure-agent tenure-agent tenure-agent.service \
  deploy/agent.example.toml /etc/tenure-agent/agent.toml \
  "Tenure agent: licence leases for the encoders on this host" \
  "The agent binds an encoder host to a Tenure licence pool with an 8-digit code, then acquires, renews and releases signed licence leases for the host's encoders, which ask it over a local socket. It rides out broker outages and picks its leases up again after a restart." \
  agent.md encoder-integration.md

build tenure-broker tenure-broker tenure-broker.service \
  deploy/broker.example.toml /etc/tenure/broker.toml \
  "Tenure licence broker for fleets of video encoders" \
  "The broker keeps estates, purchases and pools of licences, hands out 8-digit enrolment codes and signed (Ed25519) leases, and serves an HTTP admin API, an admin console and a Prometheus scrape. It stores everything in an embedded SQLite database, or in PostgreSQL shared by several replicas." \
  operations.md configuration.md design.md replicas.md
