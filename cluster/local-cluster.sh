#!/usr/bin/env bash
# Starts a local cluster for trying Switchboard out: a private PostgreSQL, a private Redis
# and N nodes (default 3) on 127.0.0.1, everything under ./switchboard-local-cluster
# (kept between runs). It prints every address and process id, reports a node that dies
# and how to restart it, and takes commands (status, kill/stop/restart <node>, help).
# Ctrl-C stops everything and deletes nothing.
#
# Usage: cluster/local-cluster.sh [--rebuild] [nodes] [base_port] [more `cluster local` flags]
#   e.g. cluster/local-cluster.sh 3 9000 --fresh --push-sink log
#   (--dir elsewhere: cluster/local-cluster.sh 3 9000 --dir /tmp/try)
# Uses target/release/switchboard (or $SWITCHBOARD_BIN) as it is; it is built (and the
# test dependencies installed) only when it is missing or --rebuild is given.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SWITCHBOARD_BIN:-target/release/switchboard}
rebuild=false
if [ "${1:-}" = "--rebuild" ]; then
  rebuild=true
  shift
fi
nodes=3
base_port=9000
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then nodes=$1; shift; fi
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then base_port=$1; shift; fi
if $rebuild || [ ! -x "$BIN" ]; then
  scripts/install-deps.sh
  cargo build --release --locked
elif [ -n "$(find src proto Cargo.toml Cargo.lock -newer "$BIN" -print -quit 2>/dev/null)" ]; then
  echo "note: $BIN is older than the sources; using it anyway (--rebuild to rebuild)" >&2
fi
dir=(--dir ./switchboard-local-cluster)
for arg in "$@"; do
  case "$arg" in --dir|--dir=*) dir=() ;; esac
done
exec "$BIN" cluster local --nodes "$nodes" --base-port "$base_port" "${dir[@]}" "$@"
