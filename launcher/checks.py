"""Check a task on the laptop with the trainer's own schema and row checks, before anything moves."""

from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import GpurunError
from trainer.config import TASK_FILE, TaskConfig, TaskError, load_task
from trainer.data import load_task_data


@dataclass
class CheckedTask:
    config: TaskConfig
    counts: dict[str, int]
    notices: list[str] = field(default_factory=list)


def check_task(task_dir: Path, overrides: tuple[str, ...] = (), experiment: str | None = None) -> CheckedTask:
    """The config and every data row, checked; raises one GpurunError listing every problem."""
    notices: list[str] = []
    try:
        config = load_task(task_dir, overrides=overrides, experiment=experiment, notices=notices)
        splits = load_task_data(task_dir, config)
    except TaskError as exc:
        raise task_error(exc, task_dir) from None
    except OSError as exc:
        raise GpurunError(f"cannot read {exc.filename}: {exc.strerror}", "check the file's permissions") from None
    return CheckedTask(config, {name: len(rows) for name, rows in splits.items()}, notices)


def task_error(exc: TaskError, task_dir: Path) -> GpurunError:
    problems = exc.problems
    hints = [p.hint for p in problems if p.hint]
    if len(problems) == 1:
        return GpurunError(str(problems[0]), problems[0].hint or f"see README: {TASK_FILE}")
    counted = len([p for p in problems if p.where])
    return GpurunError(
        f"{task_dir}: {counted} problems",
        hints[0] if len(set(hints)) == 1 else f"fix them, then check again: gpurun validate {task_dir}",
        details=[str(p) + (f"  ({p.hint})" if p.hint else "") for p in problems],
    )
