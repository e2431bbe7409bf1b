"""`python -m trainer start RUN_DIR`: create the run and detach its wrapper (or submit it to Slurm).
Standard library only.

    start RUN_DIR            stdin: {"run": {...run.json...}, "env": {...}}; creates the run, detaches the wrapper

Replies one JSON line: the wrapper's pid, state and GPUs (or the Slurm job id), or {"error", "hint"}.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from trainer.host.checkpoint_size import free_space_refusal
from trainer.host.disk import write_reserve
from trainer.host.files import reply, write_atomic
from trainer.host.gpus import GpuError, claim_gpus
from trainer.host.interpreter import missing_trackers, no_stack_message, training_python
from trainer.host.processes import write_pid_file
from trainer.host.slurm import SlurmError, submit_run
from trainer.host.state import run_state
from trainer.host.wrap import LOCK_FDS_ENV
from trainer.pushed import copy_info, trainer_argv
from trainer.rundir import ENV_FILE, OUTPUT_DIR, RUN_FILE, WRAPPER_LOG
from trainer.testpause import hold


def cmd_start(args: list[str]) -> int:
    run_dir = Path(args[0])
    # A connection that drops now must not cut a start in half: it finishes, and the laptop finds the run.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    payload = json.load(sys.stdin)
    hold("host-start")  # tests: a drop during the start
    python = training_python()
    if python is None:
        message, hint = no_stack_message()
        reply({"error": message, "hint": hint})
        return 1
    run, env = payload["run"], payload.get("env", {})
    missing = missing_trackers(python, (run.get("config") or {}).get("report") or [])
    if missing:  # before anything starts: the run would refuse it only once it had begun
        names, host = ", ".join(missing), run.get("host") or "HOST"
        message = f"report: {names} is not installed in {python}, the Python that runs the training there"
        hint = f"gpurun setup --host {host} " + " ".join(f"--with {n}" for n in missing) + ", or remove it from report:"
        reply({"error": message, "hint": hint})
        return 1
    # Resolved here, once: a `~/gpurun` workdir reaches the host relative to the login's home.
    workdir = run_dir.resolve().parent.parent
    refusal = free_space_refusal(workdir, run.get("config") or {}, {**os.environ, **env})
    if refusal is not None:
        reply(refusal)
        return 1
    if run.get("slurm") is not None:  # a Slurm login node: sbatch, and the GPUs are Slurm's to choose
        return start_slurm_job(run_dir, run, env)
    try:
        claim = claim_gpus(run.get("gpus"), run["run_id"], force=bool(run.get("force")))
    except GpuError as exc:
        reply({"error": exc.message, "hint": exc.hint})
        return 1
    run["gpus"] = claim.visible
    run["workdir"] = str(workdir)
    if run.get("nodes") and not run["nodes"].get("port"):  # node 0 of several hosts: its rendezvous port, free now
        run["nodes"]["port"] = _free_port()
    run.update(copy_info())  # the trainer that will run: the copy the launcher pushed, by path and version
    if not create_run_dir(run_dir, run, env):
        return 1
    pid = _detach_wrapper(run_dir, claim.fds)
    answer = {"pid": pid, "state": run_state(run_dir)["state"], "gpus": claim.visible, "warnings": claim.warnings}
    if run.get("nodes"):
        answer["rdzv_port"] = run["nodes"]["port"]
    hold("reply")  # tests: a drop after the run began, before its reply
    reply(answer)
    return 0


def create_run_dir(run_dir: Path, run: dict, env: dict) -> bool:
    """The run directory, as both the ssh and the Slurm path make it: output/, run.json, the 0600 env file and
    the disk reserve. False, with the error replied, when a run directory of that name already exists."""
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        reply({"error": f"run directory {run_dir} already exists"})
        return False
    (run_dir / OUTPUT_DIR).mkdir()  # exists from the start, so a pull --watch before step 1 finds it
    write_atomic(run_dir / RUN_FILE, json.dumps(run, indent=2, ensure_ascii=False))
    # Secrets travel in this 0600 file, never on a command line or in run.json.
    fd = os.open(run_dir / ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(env, fh)
    write_reserve(run_dir)
    return True


def _detach_wrapper(run_dir: Path, lock_fds: list[int]) -> int:
    """Start `wrap RUN_DIR` in a session of its own, holding the GPU locks; returns its pid (in the pid file)."""
    # The wrapper starts with SIGTERM blocked (a signal mask survives exec) and unblocks it once its handler is
    # in place: a `gpurun stop` in its first milliseconds is then handled, never the default death.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    with open(run_dir / WRAPPER_LOG, "ab") as log:
        proc = subprocess.Popen(
            trainer_argv(sys.executable, "wrap", str(run_dir.resolve())),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: its own process group, immune to the ssh session's SIGHUP
            pass_fds=lock_fds,  # the GPU locks live as long as the job does
            env={**os.environ, LOCK_FDS_ENV: ",".join(map(str, lock_fds))},
        )
    # Recorded here rather than by the wrapper, so no moment exists where the job runs but `stop` cannot find it.
    # With start_new_session the wrapper leads its own process group: pgid == pid; the trainers inherit it.
    write_pid_file(run_dir, proc.pid, proc.pid)
    return proc.pid


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def start_slurm_job(run_dir: Path, run: dict, env: dict) -> int:
    """`start` on a login node: the run directory as the ssh path makes it, then job.sbatch, submitted."""
    run["gpus"] = None  # Slurm's choice, made on the compute node (CUDA_VISIBLE_DEVICES is set by Slurm there)
    run["workdir"] = str(run_dir.resolve().parent.parent)
    run.update(copy_info())
    if not create_run_dir(run_dir, run, env):
        return 1
    try:
        job_id = submit_run(run_dir, run, env)
    except SlurmError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing was queued: leave no half-made run behind
        reply({"error": exc.message, "hint": exc.hint})
        return 1
    run["slurm"] = {**run["slurm"], "job_id": job_id}
    write_atomic(run_dir / RUN_FILE, json.dumps(run, indent=2, ensure_ascii=False))
    state = run_state(run_dir)
    reply({"job_id": job_id, "state": state["state"], "queued": state.get("queued"), "gpus": None, "warnings": []})
    return 0
