#!/usr/bin/env bash
# Runs cargo-fuzz targets for a given time each, one after the other.
#
#   scripts/fuzz.sh <target|all> <seconds>      e.g. scripts/fuzz.sh all 600
#
# Targets: frame_decoder, tcp_codec, ws_frames, http_json (fuzz/fuzz_targets/; their
# harnesses are in src/fuzz.rs). Each run starts from the committed seed corpus
# (fuzz/seeds/<target>/) plus what earlier runs found (fuzz/corpus/<target>/, not
# committed). A crash is copied to fuzz/regressions/<target>/, which
# tests/fuzz_regressions.rs replays in the normal test suite: commit it with the fix.
# Needs the nightly toolchain and cargo-fuzz (installed here when missing). Builds go
# through the shared cargo lock when FUZZ_LOCK names it (e.g. /work/.cargo.lock).
# Not part of CI: too long. Results are recorded in docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(frame_decoder tcp_codec ws_frames http_json)
if [ $# -ne 2 ]; then
  echo "usage: $0 <${targets[*]// /|}|all> <seconds per target>" >&2
  exit 2
fi
what=$1
seconds=$2
if [ "$what" = all ]; then
  selected=("${targets[@]}")
else
  selected=("$what")
fi
locked() {
  if [ -n "${FUZZ_LOCK:-}" ]; then flock "$FUZZ_LOCK" "$@"; else "$@"; fi
}
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "cargo-fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (one time)"
  locked cargo install cargo-fuzz --locked
fi
status=0
for target in "${selected[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus" "fuzz/artifacts/$target" "fuzz/regressions/$target"
  cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  # Without a sanitizer: the harness and the parsers are safe Rust, so what the fuzzer
  # looks for is panics and broken invariants; ASan would halve the executions per second.
  locked cargo +nightly fuzz build --sanitizer none --release "$target"
  log=fuzz/artifacts/$target/last-run.log
  echo "== $target for ${seconds}s (log: $log)"
  set +e
  locked cargo +nightly fuzz run --sanitizer none --release "$target" "$corpus" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 | tee "$log" | grep -E '^#[0-9]+.*(DONE|pulse)|^stat::number|==[0-9]+==|panicked|SUMMARY'
  code=${PIPESTATUS[0]}
  set -e
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
  if [ "$code" != 0 ]; then
    status=1
    for crash in fuzz/artifacts/"$target"/crash-* fuzz/artifacts/"$target"/timeout-* fuzz/artifacts/"$target"/oom-*; do
      [ -e "$crash" ] && cp "$crash" "fuzz/regressions/$target/" && echo "!! $target: $crash copied to fuzz/regressions/$target/"
    done
    echo "!! $target FAILED after $runs executions (exit $code)"
  else
    echo "== $target: no crash in ${seconds}s, $runs executions, corpus $(ls "$corpus" | wc -l) inputs"
  fi
done
exit $status
