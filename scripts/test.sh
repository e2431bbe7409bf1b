#!/usr/bin/env bash
# Sets everything up, then lint, format check and the whole test suite (real sshd, real rsync,
# real training of a tiny model on the CPU). `--fast`: only the tests marked fast (tests/conftest.py: those that use
# no sshd, training, Slurm, box account or second node, plus the smoke tests: one real loop over sshd, one real run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
# Three workers on two cores, one test file each at a time (box accounts, Slurm daemons and module fixtures stay in
# their file), the heaviest files first (tests/conftest.py): much of a test waits on ssh, rsync, Slurm's checks and
# detached jobs, so two workers left a third of the CPU idle (20:33 against 25:00, every test training on one thread).
if [ "${1:-}" = --fast ]; then shift; set -- -m fast "$@"; fi
python -m pytest -n "${GPURUN_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder "$@"
