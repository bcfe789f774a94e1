#!/usr/bin/env bash
# Runs every test of the project. Tests start their own private servers (temp dirs,
# kernel-chosen ports on 127.0.0.1) and need nothing installed beyond the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found: installing it (one time)"
  cargo install cargo-nextest --locked
fi
cargo build --all-targets --locked
cargo nextest run --locked --no-fail-fast "$@"
# Benches are built (not run) so they cannot rot.
cargo bench --no-run --locked
