#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain: the PostgreSQL server binaries
# (initdb, postgres, pg_isready), which the tests use to start private servers. Does
# nothing when they are already there. On Debian/Ubuntu as root it installs the distribution's
# package; elsewhere it says what to install.
set -euo pipefail

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

if have_postgres; then
  exit 0
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL server binaries not found: installing the distribution's postgresql package (one time)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends postgresql
  # The package may start a system-wide server; the tests never use it (each starts its own).
  have_postgres || { echo "postgresql installed but its binaries were not found" >&2; exit 1; }
else
  echo "PostgreSQL server binaries (initdb, postgres, pg_isready) are needed by the tests." >&2
  echo "Install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql)" >&2
  echo "or point SWITCHBOARD_PG_BIN at their directory." >&2
  exit 1
fi
