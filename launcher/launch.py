"""`gpurun train`: check -> push -> start detached -> record. Returns as soon as the job runs."""

import copy
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from launcher import __version__
from launcher.checks import CheckedTask, check_task, data_paths, task_error, token_checks
from launcher.errors import GpurunError, host_error
from launcher.hosts import Host, resolve_host
from launcher.nodes import Node, copy_checkpoint, each, resolve_nodes, save_nodes, start_nodes
from launcher.project import state_dir
from launcher.remote import Remote, check_python, launcher_env_secrets, remote_for
from launcher.runs import STARTING, History, RunRecord, fetch_resume_info, new_run_id
from launcher.sync import push_task, push_trainer, task_name_of, trainer_version
from trainer.task.config import Problem, TaskError, apply_overrides, config_from_dict, config_to_dict
from trainer.task.data import load_task_data

LAST_TASK = "last_task"


@dataclass
class Launched:
    record: RunRecord
    checked: CheckedTask
    gpus: str | None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    resumed: "Resumed | None" = None
    job_id: str | None = None  # on a Slurm host: the job sbatch queued
    queued: str | None = None  # and why it waits, as squeue says ("queued: Resources (job 12)")


def resolve_task_dir(root: Path, task: str | None, history: History) -> Path:
    """The task folder given, or the one pushed (or trained) last."""
    if task is None:
        last = history.get_meta(LAST_TASK)
        if last is None:
            raise GpurunError("no task given and none pushed yet", "name one: gpurun train tasks/demo")
        path = Path(last)
        return path if path.is_absolute() else root / path
    path = Path(task)
    if not path.is_dir() and (root / "tasks" / task).is_dir():  # `gpurun train hr` means tasks/hr
        path = root / "tasks" / task
    return path


def remember_task(root: Path, task_dir: Path, history: History) -> None:
    resolved = task_dir.resolve()
    try:
        shown = resolved.relative_to(root)
    except ValueError:
        shown = resolved
    history.set_meta(LAST_TASK, str(shown))


def push(root: Path, task_dir: Path, host: Host, on_progress=None, data_files=()) -> str:
    """Mirror a task (checked by the caller: nothing is pushed for an invalid one) to the host."""
    remote = remote_for(host)
    dest = push_task(remote, task_dir, on_progress, data_files)
    remember_task(root, task_dir, History(root))
    return dest


def launch(
    root: Path,
    task_dir: Path,
    host_name: str | None,
    gpus: str | None = None,
    overrides: tuple[str, ...] = (),
    experiment: str | None = None,
    resume: RunRecord | None = None,
    force: bool = False,
) -> Launched:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    task = task_name_of(task_dir)
    history = History(root)
    host = resolve_host(root, host_name)  # several hosts: node 0
    remote = remote_for(host)
    group = resolve_nodes(root, host_name)  # (name, nodes) of a several-host run, else None
    nodes = group[1] if group else [Node(0, host, remote)]
    if host.scheduler == "slurm" and gpus is not None:
        raise GpurunError(
            f"--gpus does not apply on {host.name}: Slurm chooses the GPUs there",
            f"set hosts.{host.name}.slurm.gpus_per_node in hosts.yaml (GPUs on each node)",
        )
    # A `python:` that is not there is told now, not after the local checks; on every node.
    each(nodes, lambda node: check_python(node.remote, state_dir(root)))
    resumed: Resumed | None = None
    if resume is None:
        # 1. Check the task on the laptop: nothing moves for an invalid one.
        checked = check_task(task_dir, overrides, experiment)
        token_checks(root, task_dir, overrides, experiment)  # masks and lengths, where the tokenizer is at hand
        all_overrides = list(overrides)
        lap("check")
        # 2. Sync the task (a no-op when nothing changed) and this launcher's trainer, to every node at once:
        # a node that cannot be reached fails here, before anything starts anywhere.
        each(nodes, lambda node: push_both(node, task_dir, checked))
        trainer_root = nodes[0].trainer_root
    else:
        # 1-2. A resume asks the parent's host first (with this launcher's trainer, which knows how):
        # the parent's resolved config is the truth, and a parent with nothing to resume from is
        # refused before the task is pushed or anything starts.
        for node in nodes:
            node.trainer_root = push_trainer(node.remote)
        trainer_root = nodes[0].trainer_root
        resumed = plan_resume(remote, trainer_root, resume, task, task_dir, overrides, experiment, force)
        checked = resumed.checked
        experiment = resumed.experiment
        all_overrides = resumed.overrides + list(overrides)
        if gpus is None and host.scheduler != "slurm":
            gpus = resumed.gpus
        # No laptop token checks here: the parent passed them, and the host checks every example's
        # tokens again with this exact config before it loads the model.
        lap("check")
        each(nodes, lambda node: push_task(node.remote, task_dir, data_files=data_paths(checked.config)))
        if group:  # no shared disk: every node resumes from node 0's checkpoint
            copy_checkpoint(nodes, resume.run_id, resumed.checkpoint)
    remember_task(root, task_dir, history)
    lap("push")

    # 3. Record the run, then start the wrapper detached on the host (one round trip, secrets on
    # stdin only). Recorded first: if the connection drops during the start, the next command
    # still knows this run and asks the host whether it began.
    run_id = new_run_id(task)
    started_at = time.time()
    run = {
        "run_id": run_id,
        "task": task,
        "config": config_to_dict(checked.config),
        "host": group[0] if group else host.name,
        "gpus": gpus if gpus is not None else host.gpus,
        "experiment": experiment,
        "overrides": all_overrides,
        "resume_overrides": list(overrides) if resume else [],
        "command": shlex.join(["gpurun", *sys.argv[1:]]),
        "launcher_version": __version__,
        "trainer_version": trainer_version(),
        "started_at": started_at,
        "resume_from": resume.run_id if resume else None,  # the trainer picks its latest complete checkpoint
        "force": force,
        "secret_env": host.secret_env,
    }
    if host.scheduler == "slurm":
        run["slurm"] = dict(host.slurm)  # the host's start writes job.sbatch from it and submits it
    record = RunRecord(
        run_id=run_id,
        task=task,
        task_dir=str(task_dir.resolve()),
        host=group[0] if group else host.name,
        trainer_root=trainer_root,
        started_at=started_at,
        state=STARTING,
        parent=resume.run_id if resume else None,
        experiment=experiment,
        overrides=json.dumps(all_overrides),
        step=resumed.checkpoint_step if resumed else None,  # a resumed run's first screen: step N/TOTAL
        total_steps=resumed.total_steps if resumed else None,
    )
    history.add(record)
    env = {**host.env, **launcher_env_secrets(host)}
    if group:
        save_nodes(history, run_id, nodes)
        try:
            reply, node_warnings = start_nodes(nodes, run, env, start_on_host)
        except GpurunError:
            history.delete(run_id)  # what started was stopped again: no run to remember
            raise
        reply["warnings"] = node_warnings
        failure = ""
    else:
        reply, failure = start_on_host(remote, trainer_root, run_id, {"run": run, "env": env})
    lap("start")
    if reply is None:
        raise GpurunError(
            f"no answer from {host.name} while starting {run_id} ({failure}): it may have started there",
            f"`gpurun status {run_id}` finds out (the run is recorded here)",
        )
    if "error" in reply:  # the host refused: nothing started, nothing to remember
        history.delete(run_id)
        raise host_error(host.name, reply)

    # 4. Record its state, so `logs -f` and `pull` without arguments mean this run.
    record.state = reply.get("state")
    history.add(record)
    launched = Launched(record, checked, reply.get("gpus"), reply.get("warnings") or [], timings, resumed)
    launched.job_id, launched.queued = reply.get("job_id"), reply.get("queued")
    return launched


def push_both(node: Node, task_dir: Path, checked: CheckedTask) -> None:
    push_task(node.remote, task_dir, data_files=data_paths(checked.config))
    node.trainer_root = push_trainer(node.remote)


def start_on_host(remote: Remote, trainer_root: str, run_id: str, payload: dict) -> tuple[dict | None, str]:
    """The host's JSON reply, or (None, what went wrong) when none came back: a connection that dropped
    mid-call leaves it open whether the run began."""
    argv = remote.python_argv(trainer_root, "start", remote.path("runs", run_id))
    proc = remote.run(argv, input=json.dumps(payload), check=False)
    reply = _last_json(proc.stdout)
    if reply is not None:
        return reply, ""
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:]
    return None, f"exit {proc.returncode}" + (f": {tail[0]}" if tail else "")


# ---------------------------------------------------------------- resume

# Values whose change would make a resumed run's schedule differ from the one its checkpoint was
# trained on (the optimizer and scheduler states in the checkpoint assume them).
SCHEDULE_KEYS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
)


@dataclass
class Resumed:
    parent: RunRecord
    checked: CheckedTask
    experiment: str | None  # the parent's
    overrides: list[str]  # the parent's --set values
    changes: list[tuple[str, object, object]]  # (key, parent's value, this run's) from the new --set values
    checkpoint: str
    checkpoint_step: int
    total_steps: int | None
    gpus: str | None = None  # as many GPUs as the parent had, unless --gpus says otherwise


def resume_gpus(parent_run: dict) -> str | None:
    """The --gpus a resumed run takes by default: the parent's count when it had several. The global batch is
    per-device batch x processes x accumulation, so fewer processes would train a different schedule."""
    visible = [g for g in str(parent_run.get("gpus") or "").split(",") if g.strip()]
    return str(len(visible)) if len(visible) > 1 else None


def plan_resume(
    remote: Remote,
    trainer_root: str,
    parent: RunRecord,
    task: str,
    task_dir: Path,
    overrides: tuple[str, ...],
    experiment: str | None,
    force: bool,
) -> Resumed:
    """The parent's resolved config with the new --set values on top, checked against its checkpoint."""
    info = fetch_resume_info(remote, trainer_root, parent.run_id)
    where = f"{remote.host.name}:{remote.path('runs', parent.run_id)}"
    if info.get("state") == "not_found":
        raise GpurunError(f"{parent.run_id} is not on {remote.host.name} any more ({where})", "list runs: gpurun runs")
    if info.get("state") in ("running", "queued", STARTING):
        raise GpurunError(
            f"{parent.run_id} is still running: its checkpoints are still changing",
            f"stop it first (it saves a checkpoint): gpurun stop {parent.run_id}",
        )
    run = info["run"]
    if run.get("task") != task:
        raise GpurunError(
            f"{parent.run_id} trained task {run.get('task')!r}, not {task!r}",
            f"resume it without naming a task: gpurun train --resume {parent.run_id}",
        )
    if experiment and experiment != run.get("experiment"):
        raise GpurunError(
            f"--exp {experiment} does not apply to a resumed run: it keeps {parent.run_id}'s config "
            f"(experiment: {run.get('experiment') or 'none'})",
            "change single values with --set KEY=VALUE, or start a new run with --exp",
        )
    if info.get("checkpoint") is None:
        saves = run["config"]["training"].get("save_steps")
        raise GpurunError(
            f"{parent.run_id} has no complete checkpoint to resume from (in {where}/output)",
            f"it ended before its first save (save_steps: {saves}); start a new run: gpurun train {task_dir}",
        )
    parent_config = run["config"]
    checked = resumed_config(task_dir, parent_config, overrides)
    new_config = config_to_dict(checked.config)
    changes = _changes(parent_config, new_config)
    refused = schedule_changes(parent_config, new_config, info["checkpoint_step"], info.get("total_steps"))
    if refused and not force:
        shown = "; ".join(f"training.{key}: {old!r} → {new!r}" for key, old, new in refused)
        raise GpurunError(
            f"--set would change the schedule {parent.run_id}'s checkpoint was trained with ({shown})",
            "a resumed run continues its parent's schedule; to change it anyway, add --force "
            "(the result will not match an uninterrupted run)",
        )
    total = info.get("total_steps")
    if checked.config.training.max_steps > 0:
        total = checked.config.training.max_steps
    return Resumed(
        parent=parent,
        checked=checked,
        experiment=run.get("experiment"),
        overrides=list(run.get("overrides") or []),
        changes=changes,
        checkpoint=Path(info["checkpoint"]).name,
        checkpoint_step=info["checkpoint_step"],
        total_steps=total,
        gpus=resume_gpus(run),
    )


def resumed_config(task_dir: Path, parent_config: dict, overrides: tuple[str, ...]) -> CheckedTask:
    """The parent's resolved config, the new --set values applied on top, and every data row checked."""
    raw = copy.deepcopy(parent_config)
    problems: list[Problem] = []
    apply_overrides(raw, overrides, problems)
    notices: list[str] = []
    try:
        config = config_from_dict(raw, where=lambda key: f"--set {key}", notices=notices, problems=problems)
        splits = load_task_data(task_dir, config, load_hub=False)
    except TaskError as exc:
        raise task_error(exc, task_dir) from None
    return CheckedTask(config, {name: len(rows) for name, rows in splits.items()}, notices)


def schedule_changes(old: dict, new: dict, checkpoint_step: int, total: int | None) -> list[tuple[str, object, object]]:
    """The training values that differ in a way the checkpoint's optimizer and scheduler cannot follow:
    the batch shape, the schedule, and fewer steps than the parent's (or than its checkpoint has done)."""
    before, after = old.get("training", {}), new.get("training", {})
    refused = [(key, before.get(key), after.get(key)) for key in SCHEDULE_KEYS if before.get(key) != after.get(key)]
    old_steps, new_steps = before.get("max_steps", -1), after.get("max_steps", -1)
    if new_steps != old_steps:
        longer = old_steps > 0 and new_steps > old_steps  # more steps of the same schedule: allowed
        if not longer or new_steps <= checkpoint_step:
            refused.append(("max_steps", old_steps, new_steps))
    return refused


def _changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append((f"{prefix}{key}", a, b))
    return changes


def _last_json(text: str) -> dict | None:
    for line in reversed((text or "").splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None
