#!/usr/bin/env bash
# Starts a local cluster for trying Switchboard out: a private PostgreSQL, a private Redis
# and N nodes (default 3) on 127.0.0.1, printing every address and the admin token.
# Ctrl-C stops everything. Usage: cluster/local-cluster.sh [nodes] [base_port]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked
exec target/release/switchboard cluster local --nodes "${1:-3}" --base-port "${2:-9000}" --dir ./switchboard-local-cluster
