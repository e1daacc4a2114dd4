#!/usr/bin/env bash
# The test command of README.md and .ci/run: installs into .venv, checks the code with ruff (lint and format), then runs the
# whole suite, one worker process per core (pytest-xdist), each with one thread so that the workers do not contend.
set -euo pipefail
here="$(dirname "$0")"
bash "$here/env.sh" -m ruff check "$here/.."
bash "$here/env.sh" -m ruff format --check "$here/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec bash "$here/env.sh" -m pytest -q -n auto "$@"
