#!/usr/bin/env bash
# Creates .venv with requirements.txt installed (lvm_lightning editable, with its test extra; again only when
# requirements.txt or pyproject.toml changes),
# then runs `.venv/bin/python "$@"`. Both README commands and .ci/run go through here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.cksum
want=$(cat requirements.txt pyproject.toml | cksum)  # POSIX: on Linux and macOS alike
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$PYTHON" -m venv .venv || { echo "error: '$PYTHON -m venv' failed: install Python 3.10+ with venv (Debian/Ubuntu: apt install python3-venv), or set PYTHON=/path/to/python3" >&2; exit 1; }
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  echo "$want" > "$stamp"
fi
exec .venv/bin/python "$@"
