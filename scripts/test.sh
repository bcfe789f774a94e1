#!/usr/bin/env bash
# Runs every test of the project. Tests start their own private servers (temp dirs,
# kernel-chosen ports on 127.0.0.1): switchboard itself, PostgreSQL and Redis, whose
# binaries scripts/install-deps.sh installs when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found: installing it (one time)"
  cargo install cargo-nextest --locked
fi
# Lints first: a formatting difference or any clippy warning fails the run.
echo "== cargo fmt --check =="
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings =="
cargo clippy --all-targets --locked -- -D warnings
# The committed web client bundle (web/dist) must be what its sources build to.
echo "== web client: npm ci && npm run build in a temp copy equals web/dist =="
scripts/check-web-build.sh
cargo build --all-targets --locked
# Everything, on the embedded store; the store conformance suite runs on every backend.
if [ -z "${SCYLLA_URI:-}" ]; then
  echo "== ScyllaDB conformance run SKIPPED: SCYLLA_URI is not set (set SCYLLA_URI=scylla://host1,host2/keyspace_prefix to run it against a cluster; the dry-mode error-path tests in tests/scylla_errors.rs run regardless) =="
fi
cargo nextest run --locked --no-fail-fast "$@"
# The single-node integration suite once more, with every test server on a private PostgreSQL
# (the cluster tests always run on PostgreSQL: a cluster needs a shared store).
echo "== integration suite against PostgreSQL =="
SWITCHBOARD_TEST_STORE=postgres cargo nextest run --locked --no-fail-fast \
  -E 'kind(test) and not binary(store_conformance) and not binary(protocol_props) and not binary(scylla_errors) and not binary(cluster) and not binary(tls) and not binary(openapi) and not binary(nemesis) and not binary(fuzz_regressions) and not binary(browser_console) and not binary(browser_web) and not binary(browser_web_load) and not binary(browser_web_keys) and not binary(dashboard)' "$@"
# Benches are built (not run) so they cannot rot: in the dev profile, reusing the build
# above (an optimised build of everything would double CI time for the same check).
cargo build --benches --profile dev --locked
