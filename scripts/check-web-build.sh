#!/usr/bin/env bash
# The checked build of the web client: copies web/ (without node_modules and dist) and
# proto/ into a temp dir, runs `npm ci && npm run build` there, and fails if the generated
# protobuf code (web/src/gen) or the bundle (web/dist) differs from the committed ones.
# Run by scripts/test.sh (so by CI); after changing web/ or proto/, run
# `cd web && npm run build` and commit web/dist and web/src/gen.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/web"
cp -r "$root/proto" "$tmp/proto"
(cd "$root/web" && tar --exclude=./node_modules --exclude=./dist -cf - .) | (cd "$tmp/web" && tar -xf -)
(cd "$tmp/web" && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent) >"$tmp/build.log" 2>&1 || {
  cat "$tmp/build.log" >&2
  echo "the web client does not build from its committed sources" >&2
  exit 1
}
status=0
diff -r "$root/web/dist" "$tmp/web/dist" >&2 || status=1
diff -r "$root/web/src/gen" "$tmp/web/src/gen" >&2 || status=1
if [ "$status" != 0 ]; then
  echo "web/dist or web/src/gen differs from what \`npm ci && npm run build\` makes: run it in web/ and commit the result" >&2
  exit 1
fi
echo "web/dist and web/src/gen are what the committed sources build to"
