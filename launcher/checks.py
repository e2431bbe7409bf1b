"""Check a task on the laptop with the trainer's own schema and row checks, before anything moves."""

from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import GpurunError
from trainer.task.config import TASK_FILE, Problem, TaskConfig, TaskError, load_task
from trainer.task.data import SUFFIXES, load_task_data


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
        splits = load_task_data(task_dir, config, load_hub=False, notices=notices)  # datasets is the trainer's
    except TaskError as exc:
        raise task_error(exc, task_dir) from None
    except OSError as exc:
        raise GpurunError(f"cannot read {exc.filename}: {exc.strerror}", "check the file's permissions") from None
    return CheckedTask(config, {name: len(rows) for name, rows in splits.items()}, notices)


def task_error(exc: TaskError, task_dir: Path) -> GpurunError:
    problems = exc.problems
    hints = [p.hint for p in problems if p.hint]
    if len(problems) == 1:
        return GpurunError(str(problems[0]), problems[0].hint or default_hint(problems[0]))
    counted = len([p for p in problems if p.where])
    return GpurunError(
        f"{task_dir}: {counted} problems",
        hints[0] if len(set(hints)) == 1 else f"fix them, then check again: gpurun validate {task_dir}",
        details=[str(p) + (f"  ({p.hint})" if p.hint else "") for p in problems],
    )


def warnings_of(checked: CheckedTask, report: dict | None) -> list[str]:
    """What `validate --strict` refuses besides errors: notices (renamed keys, columns no format reads) and
    examples that max_length truncates."""
    found = list(checked.notices)
    if report and report.get("truncated"):
        lost = f", {report['lost_trained']} losing trained tokens" if report.get("lost_trained") else ""
        found.append(f"{report['truncated']} example(s) longer than max_length {report['max_length']}{lost}")
    return found


def default_hint(problem: Problem) -> str:
    """For a problem that brought no hint of its own: a data row points at the row shapes, not at task.yaml."""
    if not problem.where.partition(":")[0].lower().endswith(SUFFIXES):
        return f"see README: {TASK_FILE}"
    return "fix that row: the README shows one row of each data format (see README: task.yaml, data)"


def data_paths(config: TaskConfig) -> list[str]:
    """The task's own data files as task.yaml names them (not hub: datasets): what a push must always carry."""
    names = [name for split in ("train", "eval", "test") for name in getattr(config.data, split)]
    if config.eval_suite and config.eval_suite.file:
        names.append(config.eval_suite.file)
    return sorted({name for name in names if not name.startswith("hub:")})


def token_checks(
    root: Path, task_dir: Path, overrides: tuple[str, ...] = (), experiment: str | None = None, show: int = 0
) -> dict | None:
    """Token lengths and loss masks, via `python -m trainer validate` in a subprocess (the launcher
    never imports transformers). None when the training stack is not installed here: the host checks.

    A task whose files and settings passed before is not checked again (cached by content).
    """
    import hashlib
    import importlib.util
    import json
    import subprocess
    import sys

    if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers", "trl")):
        return None
    from launcher.project import state_dir
    from launcher.sync import trainer_version

    digest = hashlib.sha256(json.dumps([list(overrides), experiment, trainer_version()]).encode())
    for path in sorted(p for p in task_dir.rglob("*") if p.is_file() and "runs" not in p.relative_to(task_dir).parts):
        digest.update(str(path.relative_to(task_dir)).encode())
        digest.update(path.read_bytes())
    cache = state_dir(root) / "checked" / digest.hexdigest()[:32]
    if cache.is_file() and not show:
        return json.loads(cache.read_text())
    from trainer.pushed import trainer_argv  # this launcher's trainer, never a trainer/ in the project folder

    argv = trainer_argv(sys.executable, "validate", str(task_dir), "--show", str(show))
    for item in overrides:
        argv += ["--set", item]
    if experiment:
        argv += ["--exp", experiment]
    proc = subprocess.run(argv, capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise GpurunError(f"the token checks failed to run: {tail}", "run: python -m trainer validate TASK") from None
    problems = [Problem(p["where"], p["message"], p["hint"]) for p in report["problems"]]
    if problems:
        raise task_error(TaskError(problems), task_dir)
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(json.dumps({k: v for k, v in report.items() if k != "previews"}))
    return report
