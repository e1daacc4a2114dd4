#!/usr/bin/env bash
# The test command of README.md and .ci/run: installs into .venv, checks the code with ruff (lint and format), then runs the whole suite.
set -euo pipefail
here="$(dirname "$0")"
bash "$here/env.sh" -m ruff check "$here/.."
bash "$here/env.sh" -m ruff format --check "$here/.."
exec bash "$here/env.sh" -m pytest -q "$@"
