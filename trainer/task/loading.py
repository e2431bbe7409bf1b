"""`task.yaml` -> a checked TaskConfig: the file, an experiment overlay on it, `--set KEY=VALUE` overrides, old key
names translated (each with a notice), the values coerced to the schema, then the rules. Every problem is collected
and reported at once, each naming the file, the line and the key, with a hint.

The laptop validates a task completely with this before a byte is pushed; the host runs the very same code again
on the resolved config (config_from_dict on what config_to_dict wrote).
"""

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from trainer.task.coerce import build
from trainer.task.problems import Problem, TaskError
from trainer.task.rules import check_task, deepspeed_file_problems
from trainer.task.schema import TaskConfig
from trainer.task.yamlfile import read_yaml

TASK_FILE = "task.yaml"
OVERRIDE = "--set"  # where a key given on the command line is, in place of its file:line

# Names from older transformers/TRL versions and from the seed documents -> the current key.
RENAMED_KEYS = {
    "training.max_seq_length": "training.max_length",
    "training.evaluation_strategy": "training.eval_strategy",
    "training.warmup_ratio": "training.warmup_steps",
    "training.epochs": "training.num_train_epochs",
    "training.optimizer": "training.optim",
    "lora.lora_alpha": "lora.alpha",
    "lora.lora_dropout": "lora.dropout",
    "lora.rank": "lora.r",
    "max_seq_length": "training.max_length",
    "load_in_4bit": "quantization.load_in_4bit",
    "load_in_8bit": "quantization.load_in_8bit",
    "method": "task",
    "orpo.beta": "preference.beta",
    "dpo.beta": "preference.beta",
    "training.early_stopping_patience": "early_stopping.patience",
}
# Keys that are accepted and ignored, with why.
IGNORED_KEYS = {
    "torch_dtype": "the dtype follows training.bf16/fp16",
    "dtype": "the dtype follows training.bf16/fp16",
}


def load_task(
    task_dir: Path | str,
    overrides: list[str] | tuple[str, ...] = (),
    experiment: str | None = None,
    notices: list[str] | None = None,
) -> TaskConfig:
    """Read `task.yaml` (+ an experiment overlay + `--set` overrides) into a checked TaskConfig."""
    task_dir = Path(task_dir)
    path = task_dir / TASK_FILE
    if not task_dir.is_dir():
        raise TaskError([Problem(str(task_dir), "no such task directory", "pass a folder that holds task.yaml")])
    if not path.is_file():
        raise TaskError([Problem(str(task_dir), f"no {TASK_FILE} here", f"create {path} (see README: task.yaml)")])
    raw, lines = read_yaml(path)
    if experiment:
        overlay, exp_lines = _read_experiment(task_dir, experiment)
        raw = deep_merge(raw, overlay)
        lines.update(exp_lines)
    problems: list[Problem] = []
    for key in apply_overrides(raw, overrides, problems):
        lines[key] = OVERRIDE
    where = lambda key: _where(path, lines, key)  # noqa: E731
    return config_from_dict(raw, where=where, notices=notices, problems=problems, task_dir=task_dir)


def _read_experiment(task_dir: Path, experiment: str) -> tuple[dict, dict[str, str]]:
    """experiments/<name>.yaml: the overlay, and the file:line of its keys."""
    exp_path = task_dir / "experiments" / f"{experiment}.yaml"
    if not exp_path.is_file():
        known = sorted(p.stem for p in (task_dir / "experiments").glob("*.yaml"))
        hint = f"known experiments: {', '.join(known) or 'none'}"
        raise TaskError([Problem(str(exp_path), "no such experiment", hint)])
    return read_yaml(exp_path)


def _where(path: Path, lines: dict[str, str], key: str) -> str:
    """Where `key` is written: its own line, else its nearest parent's, else the file."""
    probe = key
    while probe:
        if probe in lines:
            return f"{lines[probe]}: {key}" if lines[probe] != OVERRIDE else f"{OVERRIDE} {key}"
        probe = probe.rpartition(".")[0]
    return f"{path}: {key}" if key else str(path)


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], problems: list[Problem]) -> list[str]:
    """Apply `--set KEY=VALUE` items to `raw` in place (values read as YAML); returns the keys set."""
    applied = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(Problem(OVERRIDE, f"{item!r} is not key=value", "example: --set training.max_steps=300"))
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except (yaml.YAMLError, RecursionError):
            value = text
        if not _settable(raw, key.strip()):
            continue  # its parent is not a mapping: that is reported when the config is built
        set_path(raw, key.strip(), value)
        applied.append(key.strip())
    return applied


def config_from_dict(
    raw: dict,
    where=lambda key: key,
    notices: list[str] | None = None,
    problems: list[Problem] | None = None,
    task_dir: Path | None = None,
) -> TaskConfig:
    """Build a TaskConfig from plain data, collecting every problem before raising. With `task_dir`, the files the
    config names besides data (the DeepSpeed JSON) are checked too."""
    problems = problems if problems is not None else []
    notices = notices if notices is not None else []
    if not isinstance(raw, dict):
        raise TaskError([Problem(where(""), "the task must be a mapping of keys", "see README: task.yaml")])
    raw = _translate_old_names(raw, where, notices)
    config = build(TaskConfig, raw, "", where, problems)
    check_task(config, where, problems)
    if task_dir is not None:
        problems.extend(deepspeed_file_problems(config, Path(task_dir), where))
    if problems:
        raise TaskError(problems)
    return config


def config_to_dict(config: TaskConfig) -> dict:
    return dataclasses.asdict(config)


def deep_merge(base: dict, overlay: dict) -> dict:
    """Overlay wins; nested mappings merge key by key; lists are replaced, not appended."""
    merged = dict(base)
    for key, value in (overlay or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _settable(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split(".")[:-1]:
        if part not in node:
            return True
        if not isinstance(node[part], dict):
            return False
        node = node[part]
    return True


def set_path(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _translate_old_names(raw: dict, where, notices: list[str]) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for old, new in RENAMED_KEYS.items():
        section, _, leaf = old.rpartition(".")
        holder = raw.get(section) if section else raw
        if not isinstance(holder, dict) or leaf not in holder:
            continue
        value = holder.pop(leaf)
        if section and not holder:
            raw.pop(section)  # `orpo: {beta: 0.1}` leaves nothing behind
        set_path(raw, new, value)
        notices.append(f"{where(old)}: `{old}` is now `{new}`; translated")
    _translate_logging_wandb(raw, where, notices)
    for old, why in IGNORED_KEYS.items():
        if old in raw:
            raw.pop(old)
            notices.append(f"{where(old)}: `{old}` ignored: {why}")
    return raw


def _translate_logging_wandb(raw: dict, where, notices: list[str]) -> None:
    """Seed 003's `logging: {wandb: {enabled, project, entity, name}}` -> `wandb: {...}`, and `enabled: true` ->
    wandb joins `report:` (an experiment overlay that only names the run leaves report alone)."""
    logging = raw.get("logging")
    if not isinstance(logging, dict) or not isinstance(logging.get("wandb"), dict):
        return
    block = dict(logging.pop("wandb"))
    if not logging:
        raw.pop("logging")
    enabled = block.pop("enabled", None)
    raw["wandb"] = {**(raw["wandb"] if isinstance(raw.get("wandb"), dict) else {}), **block}
    said = "`logging.wandb` is now `wandb`"
    if enabled is True and "report" not in raw:
        raw["report"] = ["tensorboard", "wandb"]
        said += ", and its `enabled: true` is `report: [tensorboard, wandb]`"
    notices.append(f"{where('logging.wandb')}: {said}; translated")
