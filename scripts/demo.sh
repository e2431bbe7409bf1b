#!/usr/bin/env bash
# The whole loop on the embedded `local` host: push, train (detached), follow, pull tasks/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
gpurun push tasks/demo
gpurun train
gpurun logs -f
gpurun pull
