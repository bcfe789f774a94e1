#!/usr/bin/env bash
# Installs the Python tools the media tests use into the project's own environment
# (default $HOME/.cache/switchboard/python, or SWITCHBOARD_PYTHON_ENV): moto's server mode
# (a private S3-compatible server the tests start on 127.0.0.1) and tuspy (an existing tus
# client, which the tests use unchanged). Versions are pinned; nothing is done when they
# are already there.
set -euo pipefail
ENV_DIR="${SWITCHBOARD_PYTHON_ENV:-$HOME/.cache/switchboard/python}"
MOTO="moto[server]==5.2.5"
TUSPY="tuspy==1.1.0"
if [ -x "$ENV_DIR/bin/moto_server" ] && "$ENV_DIR/bin/python" -c 'import tusclient, moto' >/dev/null 2>&1; then
  exit 0
fi
PY="$(command -v python3 || true)"
if [ -z "$PY" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-venv
    PY="$(command -v python3)"
  else
    echo "The media tests need python3 (with venv) to install moto and tuspy." >&2
    exit 1
  fi
fi
echo "installing $MOTO and $TUSPY into $ENV_DIR (one time)"
if ! "$PY" -m venv "$ENV_DIR" 2>/dev/null; then
  # Debian's python3 ships venv separately.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
    "$PY" -m venv "$ENV_DIR"
  else
    echo "python3 -m venv failed; install python3-venv" >&2
    exit 1
  fi
fi
"$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check "$MOTO" "$TUSPY"
"$ENV_DIR/bin/python" -c 'import tusclient, moto' 
test -x "$ENV_DIR/bin/moto_server"
