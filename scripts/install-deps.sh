#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain: the PostgreSQL server binaries
# (initdb, postgres, pg_isready) and redis-server, which the tests use to start private
# servers, (scripts/install-python-deps.sh) moto's S3-compatible server and the tuspy
# tus client for the media tests, and schemathesis for the API test (each in a virtual
# environment). Does nothing when they are already there. On Debian/Ubuntu as root it
# installs the distribution's packages; elsewhere it says what to install.
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

missing=()
have_postgres || missing+=(postgresql)
have_redis || missing+=(redis-server)
if [ "${#missing[@]}" = 0 ]; then
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
else
  echo "The tests need: ${missing[*]}." >&2
  echo "PostgreSQL server binaries (initdb, postgres, pg_isready): apt-get install postgresql, brew install postgresql," >&2
  echo "  or point SWITCHBOARD_PG_BIN at their directory." >&2
  echo "redis-server: apt-get install redis-server, brew install redis, or set SWITCHBOARD_REDIS_SERVER." >&2
  exit 1
fi
