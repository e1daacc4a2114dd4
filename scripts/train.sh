#!/usr/bin/env bash
# Installs into .venv, then trains: with no arguments the default mixture model (train.py fit).
set -euo pipefail
exec bash "$(dirname "$0")/env.sh" train.py "$@"
