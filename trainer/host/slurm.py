"""Runs on a Slurm cluster: the batch script, sbatch, squeue/scontrol, scancel. Standard library only.

On a `scheduler: slurm` host the launcher's ssh target is the login node, where training is forbidden:
`start` writes runs/<id>/job.sbatch and submits it, and Slurm runs the very same wrapper the ssh path
detaches (`python -c BOOTSTRAP ROOT wrap RUN_DIR`) on the allocated node through srun. The wrapper
keeps its job (exit_code however the run ends, the trainer's checkpoint on SIGTERM); Slurm owns the
queue, the placement and the GPUs. Job liveness comes from squeue (then `scontrol show job`), never
from local pids: the wrapper runs on a compute node the login node cannot see. Accounting (sacct)
may be off on a cluster, so nothing here needs it.

Near its time limit Slurm sends SIGTERM (`--signal=TERM@LEAD`) to the job's steps: the trainer saves
a checkpoint and exits as stopped. Without a stop_requested file (the user did not ask), the script
requeues the job, and the requeued job's trainer continues from that run's latest complete checkpoint.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from trainer.pushed import trainer_argv
from trainer.rundir import (
    ENV_FILE,
    EXIT_FILE,
    EXIT_STOPPED,
    LOG_FILE,
    PID_FILE,
    RUN_FILE,
    SECRET_NAMES,
    STOP_FILE,
    TRAINER_EXIT_FILE,
)

JOB_SCRIPT = "job.sbatch"
SLURM_OUTPUT = "slurm-%j.out"  # Slurm's own messages (srun's, slurmstepd's); the run's own log stays train.log
DEFAULT_SIGNAL_LEAD_S = 120  # seconds before the time limit when the run is asked to checkpoint
KEYS = ("partition", "account", "time", "nodes", "gpus_per_node", "sbatch_args", "signal_lead")

# squeue's states while a job is not over; PENDING-like ones mean "queued".
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"}
ACTIVE_STATES = QUEUED_STATES | {
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}


class SlurmError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def batch_script(run_dir: Path, slurm: dict, wrapper_argv: list[str], run_id: str) -> str:
    """The sbatch script of a run: one task per node, the wrapper under srun, requeue on a time-limit stop."""
    run_dir = Path(run_dir)
    directives = [f"--job-name=gpurun-{run_id}"]
    for key in ("partition", "account", "time"):
        if slurm.get(key) not in (None, ""):
            directives.append(f"--{key}={slurm[key]}")
    directives.append(f"--nodes={int(slurm.get('nodes') or 1)}")
    directives.append("--ntasks-per-node=1")  # one wrapper per node; the wrapper starts one trainer per GPU
    if slurm.get("gpus_per_node"):
        directives.append(f"--gpus-per-node={int(slurm['gpus_per_node'])}")
    lead = int(slurm.get("signal_lead") or DEFAULT_SIGNAL_LEAD_S)
    directives += [
        f"--signal=TERM@{lead}",  # to the job's steps (not this script): the trainer checkpoints and exits
        "--requeue",
        "--open-mode=append",  # a requeued job adds to the same files instead of truncating them
        f"--output={run_dir / SLURM_OUTPUT}",
        f"--chdir={run_dir}",
    ]
    directives += [str(arg) for arg in slurm.get("sbatch_args") or []]
    q = shlex.quote
    wrapper = shlex.join(wrapper_argv)
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives)]
    lines += [
        f"# gpurun run {run_id}: written and submitted by gpurun on the login node.",
        f"cd {q(str(run_dir))} || exit 1",
        "# A requeued job starts clean: the files the last attempt left would say it had ended.",
        f"rm -f {EXIT_FILE} {PID_FILE} {TRAINER_EXIT_FILE} {TRAINER_EXIT_FILE}.rank*",
        "# For a wrapper spanning several nodes: where node 0 is, and which node this is.",
        'export GPURUN_NNODES="${SLURM_JOB_NUM_NODES:-1}"',
        'export GPURUN_MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 {wrapper}",
        "code=$?",
        f"[ -s {EXIT_FILE} ] && code=$(cat {EXIT_FILE})",
        f'if [ "$code" = {EXIT_STOPPED} ] && [ ! -e {STOP_FILE} ]; then',
        "  # Stopped by Slurm's time-limit signal, not by the user: continue from its checkpoint in a new allocation.",
        f'  echo "time limit near: job $SLURM_JOB_ID requeued; it continues from the latest checkpoint" >> {LOG_FILE}',
        f"  rm -f {EXIT_FILE}",
        '  scontrol requeue "$SLURM_JOB_ID" && exit 0',
        f'  echo "could not requeue job $SLURM_JOB_ID" >> {LOG_FILE}',
        "fi",
        'exit "$code"',
        "",
    ]
    return "\n".join(lines)


def submit(script: Path, env: dict) -> str:
    """sbatch the script; returns the job id. SlurmError with sbatch's own words when it refuses."""
    try:
        proc = subprocess.run(
            ["sbatch", "--parsable", str(script)], capture_output=True, text=True, env=env, timeout=60
        )
    except FileNotFoundError:
        raise SlurmError(
            "sbatch not found on the login node", "is this a Slurm login node? check PATH in hosts.yaml env:"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError("sbatch did not answer in 60 s", "check the cluster: sinfo, squeue") from None
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise SlurmError(
            f"sbatch refused the job: {said[-1] if said else f'exit {proc.returncode}'}",
            "check slurm: in hosts.yaml (partition, account, time) against `sinfo` on the login node",
        )
    job_id = proc.stdout.strip().split(";")[0]  # --parsable: "ID" or "ID;CLUSTER"
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {proc.stdout.strip()!r}, not a job id")
    return job_id


def parse_squeue(text: str) -> dict | None:
    """squeue -h -o '%i|%T|%r' for one job -> {"job_id", "slurm_state", "reason"}, or None (not listed)."""
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3 and parts[0]:
            reason = parts[2].strip()
            return {"job_id": parts[0], "slurm_state": parts[1].strip(), "reason": "" if reason == "None" else reason}
    return None


def parse_scontrol(text: str) -> dict | None:
    """`scontrol show job -o ID` (one line of Key=Value) -> the same dict as parse_squeue, or None."""
    fields = dict(re.findall(r"(\w+)=(\S*)", text))
    if "JobId" not in fields or "JobState" not in fields:
        return None
    reason = fields.get("Reason", "")
    return {"job_id": fields["JobId"], "slurm_state": fields["JobState"], "reason": "" if reason == "None" else reason}


def job_status(job_id: str, env: dict) -> dict | None:
    """How Slurm sees the job now; None when Slurm no longer knows it (ended long ago). SlurmError when no
    Slurm command answers: then nobody can say, and the caller must not guess."""
    errors = []
    for argv, parse in (
        (["squeue", "-h", "--states=all", "-j", job_id, "-o", "%i|%T|%r"], parse_squeue),
        (["scontrol", "show", "job", "-o", job_id], parse_scontrol),
    ):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{argv[0]}: {exc}")
            continue
        found = parse(proc.stdout)
        if found is not None:
            return found
        said = (proc.stderr or "").strip()
        if proc.returncode == 0 or "Invalid job id" in said:
            continue  # asked and answered: not (or no longer) known to this command
        errors.append(f"{argv[0]}: {said.splitlines()[-1] if said else f'exit {proc.returncode}'}")
    if len(errors) == 2:
        raise SlurmError("; ".join(errors))
    return None


def cancel(job_id: str, env: dict, signal_name: str | None = None) -> None:
    """scancel: with a signal, to the job's steps (the trainer checkpoints); without, the whole job ends."""
    argv = ["scancel", *([f"--signal={signal_name}"] if signal_name else []), job_id]
    subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def queued_message(status: dict) -> str:
    reason = status.get("reason") or status.get("slurm_state", "").lower()
    return f"queued: {reason} (job {status.get('job_id')})"


# ---------------------------------------------------------------- what the host commands ask of Slurm


def _env_without_secrets(env: dict, secret_names) -> dict:
    """The host's `env:` (SLURM_CONF, PATH, ...) applies to Slurm's commands; secrets stay in env.json only
    (sbatch would copy its environment into the job record on the controller)."""
    hidden = set(SECRET_NAMES) | set(secret_names or [])
    return {k: v for k, v in {**os.environ, **env}.items() if k not in hidden}


def slurm_env(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    try:
        env = json.loads((run_dir / ENV_FILE).read_text(encoding="utf-8"))
        secret_names = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8")).get("secret_env")
    except (OSError, ValueError):
        env, secret_names = {}, []
    return _env_without_secrets(env, secret_names)


def submit_run(run_dir: Path, run: dict, env: dict) -> str:
    """job.sbatch for a run directory `start` has made, submitted; returns the job id (SlurmError: nothing queued)."""
    absolute = Path(run_dir).resolve()
    script = absolute / JOB_SCRIPT
    wrapper = trainer_argv(sys.executable, "wrap", str(absolute))
    script.write_text(batch_script(absolute, run["slurm"], wrapper, run["run_id"]), encoding="utf-8")
    return submit(script, _env_without_secrets(env, run.get("secret_env")))


def slurm_state(run_dir: Path, record: dict, young: bool) -> dict | None:
    """queued / running while Slurm says the job is not over; None once it is (the run's files then say how).
    `young`: the run is still within its start's grace (a start between run.json and sbatch's answer)."""
    job_id = (record.get("slurm") or {}).get("job_id")
    if not job_id:  # between run.json and sbatch's answer, or a start that died there
        return {"state": "queued", "queued": "queued: submitting to Slurm"} if young else None
    try:
        status = job_status(str(job_id), slurm_env(run_dir))
    except SlurmError as exc:
        if (Path(run_dir) / EXIT_FILE).exists():
            return None
        # The controller does not answer: the job is Slurm's and not over by the run's own files.
        return {"state": "running", "job_id": job_id, "slurm_error": exc.message}
    if status is None:
        return None
    if status["slurm_state"] in QUEUED_STATES:
        return {"state": "queued", **status, "queued": queued_message(status)}
    if status["slurm_state"] in ACTIVE_STATES:
        return {"state": "running", **status}
    return None
