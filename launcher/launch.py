"""`gpurun train`: check -> push -> start detached -> record. Returns as soon as the job runs."""

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from launcher import __version__
from launcher.checks import CheckedTask, check_task, token_checks
from launcher.errors import GpurunError, host_error
from launcher.hosts import Host, resolve_host
from launcher.project import state_dir
from launcher.remote import Remote, check_python, launcher_env_secrets, remote_for
from launcher.runs import History, RunRecord, new_run_id
from launcher.sync import push_task, push_trainer, task_name_of, trainer_version
from trainer.config import config_to_dict

LAST_TASK = "last_task"


@dataclass
class Launched:
    record: RunRecord
    checked: CheckedTask
    gpus: str | None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


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


def push(root: Path, task_dir: Path, host: Host, on_progress=None) -> str:
    """Mirror a task (checked by the caller: nothing is pushed for an invalid one) to the host."""
    remote = remote_for(host)
    dest = push_task(remote, task_dir, on_progress)
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

    # A `python:` that is not there is told now, not after the local checks.
    check_python(remote_for(resolve_host(root, host_name)), state_dir(root))

    # 1. Check the task on the laptop: nothing moves for an invalid one.
    task = task_name_of(task_dir)
    checked = check_task(task_dir, overrides, experiment)
    token_checks(root, task_dir, overrides, experiment)  # masks and lengths, where the tokenizer is at hand
    history = History(root)
    lap("check")

    # 2. Sync the task (a no-op when nothing changed) and this launcher's trainer.
    host = resolve_host(root, host_name)
    remote = remote_for(host)
    push_task(remote, task_dir)
    trainer_root = push_trainer(remote)
    remember_task(root, task_dir, history)
    lap("push")

    # 3. Start the wrapper detached on the host; one round trip, secrets on stdin only.
    run_id = new_run_id(task)
    started_at = time.time()
    run = {
        "run_id": run_id,
        "task": task,
        "config": config_to_dict(checked.config),
        "host": host.name,
        "gpus": gpus if gpus is not None else host.gpus,
        "experiment": experiment,
        "overrides": list(overrides),
        "command": shlex.join(["gpurun", *sys.argv[1:]]),
        "launcher_version": __version__,
        "trainer_version": trainer_version(),
        "started_at": started_at,
        "resume_from": resume.run_id if resume else None,  # the trainer picks its latest complete checkpoint
        "force": force,
        "secret_env": host.secret_env,
    }
    env = {**host.env, **launcher_env_secrets(host)}
    reply = start_on_host(remote, trainer_root, run_id, {"run": run, "env": env})
    lap("start")

    # 4. Record it, so `logs -f` and `pull` without arguments mean this run.
    record = RunRecord(
        run_id=run_id,
        task=task,
        task_dir=str(task_dir.resolve()),
        host=host.name,
        trainer_root=trainer_root,
        started_at=started_at,
        state=reply.get("state"),
        parent=resume.run_id if resume else None,
    )
    history.add(record)
    return Launched(record, checked, reply.get("gpus"), reply.get("warnings") or [], timings)


def start_on_host(remote: Remote, trainer_root: str, run_id: str, payload: dict) -> dict:
    argv = remote.python_argv(trainer_root, "start", remote.path("runs", run_id))
    proc = remote.run(argv, input=json.dumps(payload), check=False)
    reply = _last_json(proc.stdout)
    if reply is None:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise GpurunError(
            f"could not start the run on {remote.host.name} (exit {proc.returncode})",
            " / ".join(tail) or f"check `python:` of host {remote.host.name} in hosts.yaml",
        )
    if "error" in reply:
        raise host_error(remote.host.name, reply)
    return reply


def _last_json(text: str) -> dict | None:
    for line in reversed((text or "").splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None
