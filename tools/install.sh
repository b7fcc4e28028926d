#!/bin/sh
# Install what jailserve needs on a Debian 12 or 13 machine, as root, into ./.venv:
#   tools/install.sh          the server
#   tools/install.sh --test   the server and everything the test suite uses
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

packages="python3 python3-venv python3-dev gcc libc6-dev"
if [ "${1:-}" = "--test" ]; then
    # iproute2: jail networks; util-linux: unshare/nsenter/ipcs; nginx, curl, wrk: real clients
    packages="$packages iproute2 util-linux procps curl nginx wrk debootstrap"
fi
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

python=python3
# Prefer the first python3 on PATH when it is new enough (>= 3.11), else Debian's.
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || python=/usr/bin/python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
    .venv/bin/python -m pip install -q -e '.[test]'
    # the reference the config tests compare against (builds from source in about two minutes)
    [ -x .venv/bin/uwsgi ] || .venv/bin/python -m pip install -q uwsgi==2.0.31
else
    .venv/bin/python -m pip install -q -e .
fi
