#!/usr/bin/env bash
# The test command of README.md and .ci/run: installs into .venv, then runs the whole suite.
set -euo pipefail
exec bash "$(dirname "$0")/env.sh" -m pytest -q "$@"
