#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain: the PostgreSQL server binaries
# (initdb, postgres, pg_isready) and redis-server, which the tests use to start private
# servers, (scripts/install-python-deps.sh) moto's S3-compatible server and the tuspy
# tus client for the media tests, and schemathesis for the API test (each in a virtual
# environment), and for the browser tests (tests/browser/) the distribution's Chromium and
# the npm packages of tests/browser (playwright-core, which never downloads a browser)
# and of web/ (the web client's build toolchain).
# Does nothing when they are already there. On Debian/Ubuntu as root it installs the
# distribution's packages; elsewhere it says what to install.
set -euo pipefail
"$(dirname "$0")/install-python-deps.sh"

have_postgres() {
  local dir
  if [ -n "${SWITCHBOARD_PG_BIN:-}" ]; then
    [ -x "$SWITCHBOARD_PG_BIN/initdb" ] && [ -x "$SWITCHBOARD_PG_BIN/postgres" ] && [ -x "$SWITCHBOARD_PG_BIN/pg_isready" ]
    return
  fi
  for dir in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_isready" ]; then
      return 0
    fi
  done
  command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1
}

have_redis() {
  if [ -n "${SWITCHBOARD_REDIS_SERVER:-}" ]; then
    [ -x "$SWITCHBOARD_REDIS_SERVER" ]
    return
  fi
  command -v redis-server >/dev/null 2>&1
}

# schemathesis (PyPI) for the property-based test of the HTTP API against its OpenAPI
# document (tests/openapi.rs), in a virtual environment of its own, pinned.
SCHEMATHESIS_VERSION=4.32.5
schemathesis_venv="${SWITCHBOARD_SCHEMATHESIS_VENV:-$HOME/.local/share/switchboard/schemathesis-$SCHEMATHESIS_VERSION}"
install_schemathesis() {
  if [ -x "$schemathesis_venv/bin/schemathesis" ]; then
    return 0
  fi
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -q && apt-get install -y -q --no-install-recommends python3-venv
    else
      echo "schemathesis needs python3 with venv (apt-get install python3-venv)" >&2
      return 1
    fi
  fi
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $schemathesis_venv (one time)"
  python3 -m venv "$schemathesis_venv"
  "$schemathesis_venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
}
install_schemathesis

# Headless Chromium for the browser tests, driven by playwright-core: the distribution's
# package (SWITCHBOARD_CHROMIUM may name another binary, as the tests accept).
have_chromium() {
  [ -x "${SWITCHBOARD_CHROMIUM:-/usr/bin/chromium}" ]
}

# Node.js 20 or later and npm, which run the browser test scripts.
have_node() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
    [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -ge 20 ]
}

# npm ci in a folder of the repository (tests/browser: playwright-core; web/: the web
# client's toolchain, Vite, TypeScript, buf and protoc-gen-es), only when node_modules is
# missing or older than the lockfile (npm keeps its own copy of the lockfile in
# node_modules/.package-lock.json).
install_npm_packages() {
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/$1"
  if [ -f "$dir/node_modules/.package-lock.json" ] && ! [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    return 0
  fi
  echo "installing the npm packages of $1 (npm ci)"
  (cd "$dir" && npm ci --no-audit --no-fund)
}

install_browser_packages() {
  install_npm_packages tests/browser
  install_npm_packages web
}

missing=()
have_postgres || missing+=(postgresql)
have_redis || missing+=(redis-server)
have_chromium || missing+=(chromium)
have_node || missing+=(nodejs npm)
if [ "${#missing[@]}" = 0 ]; then
  install_browser_packages
  exit 0
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the distribution's ${missing[*]} package(s) (one time)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The packages may start system-wide servers; the tests never use them (each starts its own).
  have_postgres || { echo "postgresql installed but its binaries were not found" >&2; exit 1; }
  have_redis || { echo "redis-server installed but not found" >&2; exit 1; }
  have_chromium || { echo "chromium installed but ${SWITCHBOARD_CHROMIUM:-/usr/bin/chromium} not found" >&2; exit 1; }
  have_node || { echo "the browser tests need Node.js 20 or later with npm; the distribution's is $(node --version 2>/dev/null || echo missing)" >&2; exit 1; }
  install_browser_packages
else
  echo "The tests need: ${missing[*]}." >&2
  echo "PostgreSQL server binaries (initdb, postgres, pg_isready): apt-get install postgresql, brew install postgresql," >&2
  echo "  or point SWITCHBOARD_PG_BIN at their directory." >&2
  echo "redis-server: apt-get install redis-server, brew install redis, or set SWITCHBOARD_REDIS_SERVER." >&2
  echo "chromium (browser tests): apt-get install chromium, or set SWITCHBOARD_CHROMIUM to a Chromium binary." >&2
  echo "Node.js 20+ and npm (browser tests): from your distribution or the Node.js project's installers." >&2
  exit 1
fi
