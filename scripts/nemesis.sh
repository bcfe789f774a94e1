#!/usr/bin/env bash
# Fault injection on a local three-node cluster (PostgreSQL + Redis + 3 nodes on
# 127.0.0.1) under 1:1 and group traffic: nodes SIGKILLed and restarted, frozen with
# SIGSTOP and thawed, Redis and PostgreSQL restarted; then a checker over what every
# device saw (src/testkit/nemesis.rs). Prints one JSON report; exits 1 on a violation.
#
#   scripts/nemesis.sh --minutes N [--seed S] [--fault-every SECONDS]
#
# The nodes' logs stay in ./switchboard-nemesis/ (or --dir). With NEMESIS_LOCK set
# (e.g. /work/.cargo.lock) the build and the run hold that lock. A short run is part of
# the test suite (tests/nemesis.rs); results of long runs are in docs/nemesis.md.
set -euo pipefail
cd "$(dirname "$0")/.."
locked() {
  if [ -n "${NEMESIS_LOCK:-}" ]; then flock "$NEMESIS_LOCK" "$@"; else "$@"; fi
}
locked cargo build --locked --bin switchboard
dir=./switchboard-nemesis
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
rm -rf "$dir"
SWITCHBOARD_LOG=${SWITCHBOARD_LOG:-warn,switchboard::testkit::nemesis=info} locked target/debug/switchboard nemesis --dir "$dir" "${args[@]}"
