#!/bin/sh
# Install everything the tests need (Debian packages, then Python packages,
# then the pinned node packages of tests/interop/node) and run them all: the
# store tests start their own throwaway redis-server and PostgreSQL on
# loopback ports.
set -eu
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
missing=""
for package in $(grep -v '^#' .ci/apt-packages); do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
fi

python3 -m pip install -q -e '.[test]'
# the node client libraries of the interoperability tests, as pinned
(cd tests/interop/node && npm ci --no-audit --no-fund --silent)
python3 -m ruff check ccserver tests twisted bench
python3 -m mypy
python3 -m pytest -n 2 "$@"
