"""`gpurun train`: check -> push -> start detached -> record. Returns as soon as the job runs."""

import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from launcher import __version__
from launcher.checks import CheckedTask, check_all, check_task, data_paths
from launcher.errors import GpurunError
from launcher.hostcalls import host_error, start_run
from launcher.hosts import Host, resolve_host
from launcher.nodes import Node, copy_checkpoint, each, resolve_nodes, save_nodes, start_nodes
from launcher.project import state_dir
from launcher.remote import Remote, SSHFailure, check_python, launcher_env_secrets, remote_for
from launcher.resume import Resumed, plan_resume
from launcher.runs import STARTING, History, RunRecord, new_run_id
from launcher.sync import PushPlan, plan_push, push_task, push_trainer, task_name_of, trainer_version
from trainer.task.loading import config_to_dict
from trainer.testpause import hold

LAST_TASK = "last_task"


@dataclass
class Launched:
    record: RunRecord
    checked: CheckedTask
    gpus: str | None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    resumed: Resumed | None = None
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


@dataclass
class TaskPush:
    """`gpurun push`, checked and planned: what it will mirror where (shown before the transfer starts)."""

    task_dir: Path
    host: Host
    data_files: list[str]
    plan: PushPlan
    checked: CheckedTask | None = None


def plan_task_push(root: Path, task: str | None, host_name: str | None) -> TaskPush:
    task_dir = resolve_task_dir(root, task, History(root))
    host = resolve_host(root, host_name)
    task_name_of(task_dir)
    checked = check_task(task_dir, root=root)  # nothing is pushed for an invalid task (cached by the data's bytes)
    data_files = data_paths(checked.config)
    return TaskPush(task_dir, host, data_files, plan_push(task_dir, data_files), checked)


def push(root: Path, pushing: TaskPush, on_progress=None) -> str:
    """Mirror a task (checked by plan_task_push: nothing is pushed for an invalid one) to the host."""
    remote = remote_for(pushing.host)
    dest = push_task(remote, pushing.task_dir, on_progress, pushing.data_files, held=pushing.plan.held)
    remember_task(root, pushing.task_dir, History(root))
    return dest


@dataclass
class TrainRequest:
    """`gpurun train`'s arguments resolved: the task folder, the host named, the run resumed."""

    task_dir: Path
    host: str | None
    parent: RunRecord | None


def resolve_train(root: Path, task: str | None, host: str | None, resume: str | None) -> TrainRequest:
    """A resume takes its parent's task and host unless told otherwise; else the task given or pushed last."""
    history = History(root)
    parent = history.get(resume) if resume else None
    if parent and task is None:
        task = parent.task_dir
    if parent and host is None:
        host = parent.host
    return TrainRequest(resolve_task_dir(root, task, history), host, parent)


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
    """Check, push, start detached, record: the run as started, or a GpurunError before anything starts."""
    timings: dict[str, float] = {}
    lap = stopwatch(timings)
    task = task_name_of(task_dir)
    history = History(root)
    target = resolve_target(root, host_name, gpus)
    if resume is None:
        prepared = prepare_new(root, task_dir, target, overrides, experiment, gpus, lap)
    else:
        prepared = prepare_resume(task_dir, target, resume, task, overrides, experiment, gpus, force, lap)
    remember_task(root, task_dir, history)
    lap("push")
    record, run = describe_run(new_run_id(task), task, task_dir, target, prepared, overrides, resume, force)
    reply = start(history, target, record, run)
    lap("start")
    # 4. Record its state, so `logs -f` and `pull` without arguments mean this run.
    record.state = reply.get("state")
    history.add(record)
    launched = Launched(record, prepared.checked, reply.get("gpus"), reply.get("warnings") or [], timings)
    launched.resumed, launched.job_id, launched.queued = prepared.resumed, reply.get("job_id"), reply.get("queued")
    return launched


def stopwatch(timings: dict[str, float]) -> Callable[[str], None]:
    """lap(name) records the seconds since the previous lap (or since now) under `name`."""
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    return lap


@dataclass
class Target:
    """Where a run goes: `name` as the history records it (a several-host run: the group's), the host that
    decides (node 0), its remote, and every node (one for a one-host run)."""

    name: str
    host: Host
    remote: Remote
    nodes: list[Node]
    several: bool


def resolve_target(root: Path, host_name: str | None, gpus: str | None) -> Target:
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
    return Target(group[0] if group else host.name, host, remote, nodes, group is not None)


@dataclass
class Prepared:
    """A run checked and pushed to every node, about to start."""

    checked: CheckedTask
    experiment: str | None
    overrides: list[str]  # every --set in effect (a resumed run: its parent's, then its own)
    gpus: str | None
    trainer_root: str  # node 0's
    resumed: Resumed | None = None


def prepare_new(
    root: Path,
    task_dir: Path,
    target: Target,
    overrides: tuple[str, ...],
    experiment: str | None,
    gpus: str | None,
    lap: Callable[[str], None],
) -> Prepared:
    # 1. Check the task on the laptop: nothing moves for an invalid one.
    # Rows, then masks and lengths where the tokenizer is at hand; each skipped when what shapes it is unchanged.
    checked = check_all(root, task_dir, overrides, experiment)
    lap("check")
    # 2. Sync the task (a no-op when nothing changed) and this launcher's trainer, to every node at once:
    # a node that cannot be reached fails here, before anything starts anywhere.
    hold("push")  # tests: a drop before the push
    each(target.nodes, lambda node: push_both(node, task_dir, checked))
    return Prepared(checked, experiment, list(overrides), gpus, target.nodes[0].trainer_root)


def prepare_resume(
    task_dir: Path,
    target: Target,
    parent: RunRecord,
    task: str,
    overrides: tuple[str, ...],
    experiment: str | None,
    gpus: str | None,
    force: bool,
    lap: Callable[[str], None],
) -> Prepared:
    # 1-2. A resume asks the parent's host first (with this launcher's trainer, which knows how):
    # the parent's resolved config is the truth, and a parent with nothing to resume from is
    # refused before the task is pushed or anything starts.
    for node in target.nodes:
        node.trainer_root = push_trainer(node.remote)
    trainer_root = target.nodes[0].trainer_root
    resumed = plan_resume(target.remote, trainer_root, parent, task, task_dir, overrides, experiment, force)
    if gpus is None and target.host.scheduler != "slurm":
        gpus = resumed.gpus
    # No laptop token checks here: the parent passed them, and the host checks every example's
    # tokens again with this exact config before it loads the model.
    lap("check")
    data_files = data_paths(resumed.checked.config)
    each(target.nodes, lambda node: push_task(node.remote, task_dir, data_files=data_files))
    if target.several:  # no shared disk: every node resumes from node 0's checkpoint
        copy_checkpoint(target.nodes, parent.run_id, resumed.checkpoint)
    all_overrides = resumed.overrides + list(overrides)
    return Prepared(resumed.checked, resumed.experiment, all_overrides, gpus, trainer_root, resumed)


def push_both(node: Node, task_dir: Path, checked: CheckedTask) -> None:
    push_task(node.remote, task_dir, data_files=data_paths(checked.config))
    hold("trainer-push")  # tests: a drop mid-push
    node.trainer_root = push_trainer(node.remote)


def describe_run(
    run_id: str,
    task: str,
    task_dir: Path,
    target: Target,
    prepared: Prepared,
    overrides: tuple[str, ...],
    resume: RunRecord | None,
    force: bool,
) -> tuple[RunRecord, dict]:
    """The laptop's record of the run (state: starting) and the run.json the host's start writes."""
    host = target.host
    started_at = time.time()
    run = {
        "run_id": run_id,
        "task": task,
        "config": config_to_dict(prepared.checked.config),
        "host": target.name,
        "gpus": prepared.gpus if prepared.gpus is not None else host.gpus,
        "experiment": prepared.experiment,
        "overrides": prepared.overrides,
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
    resumed = prepared.resumed
    record = RunRecord(
        run_id=run_id,
        task=task,
        task_dir=str(task_dir.resolve()),
        host=target.name,
        trainer_root=prepared.trainer_root,
        started_at=started_at,
        state=STARTING,
        parent=resume.run_id if resume else None,
        experiment=prepared.experiment,
        overrides=json.dumps(prepared.overrides),
        step=resumed.checkpoint_step if resumed else None,  # a resumed run's first screen: step N/TOTAL
        total_steps=resumed.total_steps if resumed else None,
    )
    return record, run


def start(history: History, target: Target, record: RunRecord, run: dict) -> dict:
    """3. Record the run, then start the wrapper detached on the host (one round trip, secrets on stdin
    only); the host's reply. Recorded first: if the connection drops during the start, the next command
    still knows this run and asks the host whether it began (`settle`). A start that surely never reached
    the host (ssh could not even connect) forgets the run again: it cannot have begun."""
    run_id, host = record.run_id, target.host
    history.add(record)
    hold("start")  # tests: a drop between the push and the start
    env = {**host.env, **launcher_env_secrets(host)}
    if target.several:
        save_nodes(history, run_id, target.nodes)
        try:
            reply, node_warnings = start_nodes(target.nodes, run, env)
        except GpurunError:
            history.delete(run_id)  # what started was stopped again: no run to remember
            raise
        reply["warnings"] = node_warnings
        failure = ""
    else:
        try:
            reply, failure = start_run(target.remote, record.trainer_root, run_id, {"run": run, "env": env})
        except SSHFailure as exc:
            if not exc.may_have_run:
                history.delete(run_id)  # ssh never connected: the start never reached the host
                raise
            reply, failure = None, exc.message  # the link dropped mid-call: it may have begun
    if reply is None:
        raise GpurunError(
            f"no answer from {host.name} while starting {run_id} ({failure}): it may have started there",
            f"`gpurun status {run_id}` finds out (the run is recorded here)",
        )
    if "error" in reply:  # the host refused: nothing started, nothing to remember
        history.delete(run_id)
        raise host_error(host.name, reply)
    return reply
