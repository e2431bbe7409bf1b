#!/usr/bin/env bash
# Sets everything up, then lint, format check and the whole test suite (real sshd, real rsync,
# real training of a tiny model on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
python -m pytest "$@"
