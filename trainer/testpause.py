"""GPURUN_TEST_PAUSE=STEP:SECONDS: hold one step of `gpurun train` open, so a test can drop the connection
at that exact moment (tests/test_dropped_start.py). Read here only; unset (always, outside tests) it does nothing.
Standard library only: the host's start reads it too (set it in the host's `env:` in hosts.yaml for those steps).

    push          laptop, after the checks, before anything is pushed
    trainer-push  laptop, mid-push: the task is on the host, the trainer not yet
    start         laptop, after the push and the run's record, before the start command is sent
    host-start    host's `start`, after it read the run, before it makes the run directory
    reply         host's `start`, after the run began, before it replies

While it holds, it says `gpurun: test pause at STEP` on stderr (the laptop's; the host's goes back over ssh).

GPURUN_TEST_STEP_SECONDS=SECONDS: every training step also waits that long. Tests of a run's life (killed, stopped,
dropped, requeued at a time limit) need a run that lasts, not one that burns both cores: a sleeping step leaves the
CPU to the suite's other worker. The steps still train.
"""

import os
import sys
import time

PAUSE_ENV = "GPURUN_TEST_PAUSE"
STEP_SECONDS_ENV = "GPURUN_TEST_STEP_SECONDS"


def hold(step: str) -> None:
    value = os.environ.get(PAUSE_ENV, "")
    name, _, seconds = value.partition(":")
    if name != step:
        return
    sys.stderr.write(f"gpurun: test pause at {step}\n")
    sys.stderr.flush()
    time.sleep(float(seconds or 0))


def step_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(STEP_SECONDS_ENV, "") or 0))
    except ValueError:
        return 0.0
