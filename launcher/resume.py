"""`gpurun train --resume RUN`: the parent's resolved config, the new --set values on top, checked against the
checkpoint the new run continues from."""

import copy
from dataclasses import dataclass
from pathlib import Path

from launcher.checks import CheckedTask, task_error
from launcher.errors import GpurunError
from launcher.hostcalls import fetch_resume_info
from launcher.remote import Remote
from launcher.runs import STARTING, RunRecord
from trainer.task.loading import apply_overrides, config_from_dict, config_to_dict
from trainer.task.problems import Problem, TaskError
from trainer.task.splits import load_task_data

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
