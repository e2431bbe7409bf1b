#!/usr/bin/env bash
# Sets up everything gpurun's demo and tests need, idempotently: rsync + openssh-server (apt-get,
# when root), a .venv with the CPU build of torch, and gpurun itself with [train,dev] (--tests: and [trackers]).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
# A one-node Slurm cluster for tests/test_slurm.py (only as root: its daemons run as root; skipped otherwise).
# Only for the tests (scripts/test.sh passes --tests): the demo does not need it.
if [ "${1:-}" = --tests ] && [ "$(id -u)" = 0 ] && ! { [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/munged ]; }; then need_apt+=(slurm-wlm munge); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install: ${need_apt[*]}" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
log=.venv/setup.log
pip() {  # quiet unless it fails: pip's own warnings would drown the test output
  .venv/bin/python -m pip --disable-pip-version-check -q "$@" >>"$log" 2>&1 || { tail -n 30 "$log" >&2; exit 1; }
}
# The CPU build (a plain `torch` would pull a multi-GB CUDA build). Override with TORCH_SPEC.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing ${TORCH_SPEC:-torch==2.13.0}"
  pip install "${TORCH_SPEC:-torch==2.13.0}"
fi
# The tests also read back what W&B, trackio and MLflow wrote (about a minute more to install; the demo needs none).
extras=train,dev modules="launcher, trl, peft, pytest, ruff"
if [ "${1:-}" = --tests ]; then extras=train,dev,trackers modules="$modules, wandb, trackio, mlflow"; fi
if ! .venv/bin/python -c "import $modules" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.gpurun-installed ]; then
  echo "setup: installing gpurun[$extras]"
  pip install -e ".[$extras]"
  touch .venv/.gpurun-installed
fi
