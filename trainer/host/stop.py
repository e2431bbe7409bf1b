"""`python -m trainer stop RUN_DIR GRACE`: ask a job to stop, and make sure it does. Standard library only.

    stop RUN_DIR GRACE       SIGTERM to the job's process group, SIGKILL after GRACE seconds

The trainers save a checkpoint on SIGTERM and exit as stopped; GRACE is how long they get. A Slurm job
is stopped through Slurm (scancel), since the login node cannot see its processes.
"""

import signal
import time
from pathlib import Path

from trainer.host.exits import trainers_ended
from trainer.host.files import reply, write_atomic
from trainer.host.processes import (
    group_members,
    job_alive,
    process_marker,
    read_pid_file,
    signal_each,
    signal_group,
)
from trainer.host.slurm import cancel, slurm_env
from trainer.host.state import run_state
from trainer.host.torchrun import process_count, trainer_processes
from trainer.host.wrap import record_end
from trainer.rundir import EXIT_FILE, EXIT_KILLED, EXIT_STOPPED, STOP_FILE

KILL_WAIT_S = 10  # after SIGKILL: how long the job's processes get to be gone
CANCEL_WAIT_S = 30.0  # after scancel: how long Slurm gets to end the job


def cmd_stop(args: list[str]) -> int:
    run_dir, grace = Path(args[0]), float(args[1])
    state = run_state(run_dir)
    if state["state"] not in ("running", "queued"):
        reply(state)
        return 0
    if state.get("job_id"):  # a Slurm job: scancel, not signals to pids the login node cannot see
        reply(stop_slurm_job(run_dir, state, grace))
        return 0
    # Written first: a wrapper that has not started the trainers yet sees it and never does.
    write_atomic(run_dir / STOP_FILE, f"{time.time()}\n")
    info = _ask_within_grace(run_dir, grace)
    killed = False
    if run_state(run_dir)["state"] == "running" and info is not None:
        _kill(run_dir, info)
        killed = True
    if (
        not (run_dir / EXIT_FILE).exists()
        and not (info is not None and job_alive(info))
        and not trainer_processes(run_dir)
    ):
        # No wrapper is left to say how the job ended (killed with the group, or killed alone earlier): say it here,
        # from the trainers' own records when they left them.
        ended = trainers_ended(run_dir, process_count(run_state(run_dir).get("gpus")))
        record_end(run_dir, int(ended["code"]) if ended else EXIT_KILLED if killed else EXIT_STOPPED)
    reply(run_state(run_dir))
    return 0


def _ask_within_grace(run_dir: Path, grace: float) -> dict | None:
    """Ask once, then wait up to `grace` for the job to end; returns its pid record (None: it never had one)."""
    info, asked = read_pid_file(run_dir), False
    deadline = time.time() + grace
    while time.time() < deadline and run_state(run_dir)["state"] == "running":
        info = info or read_pid_file(run_dir)  # absent only while a `start` is between run.json and the pid file
        if info is not None and not asked:
            _ask_to_stop(info, run_dir)
            asked = True
        time.sleep(0.2)
    return info


def _ask_to_stop(info: dict, run_dir: Path) -> None:
    """One SIGTERM to the wrapper, which forwards one to each trainer; they save a checkpoint and exit. When the
    wrapper is gone, to the processes it left behind: the group's processes whose parent is outside the group (the
    trainer, or the torchrun launcher that forwards it), or else torchrun's workers it left in their own sessions."""
    if process_marker(info["pid"]) == info.get("marker"):
        targets = [info["pid"]]
    else:
        members = group_members(info.get("pgid") or info["pid"])
        targets = [pid for pid, parent in members.items() if parent not in members]
        targets = targets or trainer_processes(run_dir)
    signal_each(targets, signal.SIGTERM)


def _kill(run_dir: Path, info: dict) -> None:
    """SIGKILL to the job's group and to torchrun's workers outside it, then wait a little for them to be gone."""
    signal_group(info.get("pgid") or info["pid"], signal.SIGKILL)
    signal_each(trainer_processes(run_dir), signal.SIGKILL)  # torchrun's workers, outside the group
    gone_by = time.time() + KILL_WAIT_S
    while (job_alive(info) or trainer_processes(run_dir)) and time.time() < gone_by:
        time.sleep(0.1)


def stop_slurm_job(run_dir: Path, state: dict, grace: float) -> dict:
    """`gpurun stop` of a Slurm job: SIGTERM to its steps (the trainer saves one checkpoint), scancel after
    `grace`; a job still queued is cancelled at once. The stop file first: the script never requeues it then."""
    write_atomic(run_dir / STOP_FILE, f"{time.time()}\n")
    job_id, env = str(state["job_id"]), slurm_env(run_dir)
    killed = False
    if state["state"] == "running":
        cancel(job_id, env, "TERM")
        _wait_while_live(run_dir, time.time() + grace)
    if run_state(run_dir)["state"] in ("running", "queued"):
        killed = state["state"] == "running"
        cancel(job_id, env)
        _wait_while_live(run_dir, time.time() + CANCEL_WAIT_S)
    if not (run_dir / EXIT_FILE).exists():  # cancelled before the wrapper ran, or killed with it
        record_end(run_dir, EXIT_KILLED if killed else EXIT_STOPPED)
    return run_state(run_dir)


def _wait_while_live(run_dir: Path, deadline: float) -> None:
    while time.time() < deadline and run_state(run_dir)["state"] in ("running", "queued"):
        time.sleep(0.5)
