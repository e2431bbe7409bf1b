"""`python -m trainer wrap RUN_DIR`: the detached wrapper that runs the trainers and records how the job ended.
Standard library only.

    wrap RUN_DIR             the detached wrapper: runs the trainer, records exit_code however it ends

`start` detaches it in a session of its own (or Slurm runs it on the allocated node); it holds the GPU
locks for as long as the job runs, and writes exit_code however the trainers end.
"""

import json
import os
import signal
import sys
from pathlib import Path

from trainer.checkpoints import latest_complete_checkpoint
from trainer.events import EventWriter
from trainer.host.disk import FULL_BELOW_BYTES, NO_SPACE, free_bytes, note_disk_full, release_reserve
from trainer.host.files import write_atomic
from trainer.host.interpreter import training_python
from trainer.host.processes import write_pid_file
from trainer.host.state import has_event, progress
from trainer.host.torchrun import process_count, run_workers
from trainer.pushed import trainer_argv
from trainer.rundir import (
    ENV_FILE,
    EVENTS_FILE,
    EXIT_FILE,
    EXIT_OOM_RESTART,
    EXIT_STOPPED,
    LOG_FILE,
    OUTPUT_DIR,
    PID_FILE,
    RUN_FILE,
    STOP_FILE,
)

LOCK_FDS_ENV = "GPURUN_LOCK_FDS"  # the GPU lock files' descriptors `start` passed down, kept open by the job


def cmd_wrap(args: list[str]) -> int:
    run_dir = Path(args[0])
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # A stop that arrives before the trainers exist is kept here and honoured (start blocked SIGTERM until now).
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: stopping.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if not (run_dir / PID_FILE).exists():  # `start` died (its connection dropped) before it could write it
        me = os.getpid()
        write_pid_file(run_dir, me, os.getpgid(me))
    record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    lock_fds = [int(fd) for fd in os.environ.pop(LOCK_FDS_ENV, "").split(",") if fd]
    env = _job_env(run_dir, record)
    argv = trainer_argv(training_python() or sys.executable, "run", str(run_dir))
    if stopping or (run_dir / STOP_FILE).exists():
        exit_code = EXIT_STOPPED  # stopped before the trainers started: they never do
    else:
        count, nodes = process_count(record.get("gpus")), record.get("nodes")
        exit_code = run_workers(argv, env, count, run_dir, LOG_FILE, lock_fds, stopping, nodes=nodes)
        # Out of memory: the trainer recorded a smaller split (trainer/training/oom.py); all of it starts again.
        while exit_code == EXIT_OOM_RESTART and not stopping and not (run_dir / STOP_FILE).exists():
            exit_code = run_workers(argv, env, count, run_dir, LOG_FILE, lock_fds, stopping, nodes=nodes)
    record_end(run_dir, exit_code)
    return 0


def _job_env(run_dir: Path, record: dict) -> dict:
    """The trainers' environment: ours, the run's env file (secrets included), unbuffered output, its GPUs."""
    env = dict(os.environ)
    env.update(json.loads((run_dir / ENV_FILE).read_text(encoding="utf-8")))
    env["PYTHONUNBUFFERED"] = "1"
    if record.get("gpus") is not None:
        env["CUDA_VISIBLE_DEVICES"] = record["gpus"]
    return env


def record_end(run_dir: Path, exit_code: int) -> None:
    """Write how the job ended (exit_code), with what the trainer could not say itself: a full disk, a stop."""
    stopped = (run_dir / STOP_FILE).exists()
    if exit_code != 0 and not stopped and free_bytes(run_dir) < FULL_BELOW_BYTES:
        if not has_event(run_dir, "error", NO_SPACE):
            note_disk_full(run_dir, None)  # e.g. torch's "file write failed", which never names the cause
    release_reserve(run_dir)
    if stopped and not has_event(run_dir, "stopped"):
        # The trainer was stopped before it could catch SIGTERM (still starting), or was killed after the grace.
        checkpoint = latest_complete_checkpoint(run_dir / OUTPUT_DIR)
        step = progress(run_dir / EVENTS_FILE).get("step", 0)
        EventWriter(run_dir / EVENTS_FILE).emit(
            "stopped", step=step, checkpoint=checkpoint.name if checkpoint else None
        )
    write_atomic(run_dir / EXIT_FILE, f"{exit_code}\n")
