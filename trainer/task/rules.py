"""The rules a task must keep beyond the types of its values: what must be there, what excludes what, values the
trainer would refuse (or silently misuse) once the run has started on the host, files that would not be pushed.
Each broken rule is a Problem; all of them are collected, never only the first."""

import codecs
import difflib
import json
import math
import os
import re
from pathlib import Path

from trainer.builtin.tiny import KNOWN_BUILTINS, TINY_BASE_MODEL, builtin_name, is_builtin, tiny_module_names
from trainer.task.problems import Problem
from trainer.task.schema import SCHEDULER_KWARGS, SEED_RANGE, TaskConfig


def check_task(config: TaskConfig, where, problems: list[Problem]) -> None:
    """Every rule a built config must keep, each broken one a Problem at `where(key)`, in the order they are listed."""
    _check_base_model(config, where, problems)
    _check_basics(config, where, problems)
    _check_features(config, where, problems)
    _check_lora(config, where, problems)
    _check_numbers(config, where, problems)
    _check_schedule(config, where, problems)
    _check_checkpoints(config, where, problems)
    _check_data_paths(config, where, problems)
    _check_distributed(config, where, problems)
    _check_encoding(config, where, problems)
    _check_report(config, where, problems)


def _check_base_model(config: TaskConfig, where, problems: list[Problem]) -> None:
    base = config.base_model
    if not base:
        hint = f"e.g. base_model: Qwen/Qwen3-4B, or {TINY_BASE_MODEL}"
        problems.append(Problem(where("base_model"), "missing", hint))
    elif is_builtin(base) and builtin_name(base) not in KNOWN_BUILTINS:
        problems.append(Problem(where("base_model"), f"unknown builtin {base!r}", f"use {TINY_BASE_MODEL}"))
    elif not is_builtin(base) and not _model_name_ok(base):
        shown = repr(base[:60]) + ("..." if len(base) > 60 else "")
        problems.append(
            Problem(
                where("base_model"),
                f"{shown} is neither a hub id (owner/name) nor a path",
                f"e.g. Qwen/Qwen3-4B, /models/my-model, ./my-model, or {TINY_BASE_MODEL}",
            )
        )


def _check_basics(config: TaskConfig, where, problems: list[Problem]) -> None:
    """Training data, sizes and amounts without which no run can start."""
    if not config.data.train:
        problems.append(Problem(where("data.train"), "no training data", "data: {train: [data/train.jsonl]}"))
    t = config.training
    positive = {
        "training.per_device_train_batch_size": t.per_device_train_batch_size,
        "training.per_device_eval_batch_size": t.per_device_eval_batch_size,
        "training.gradient_accumulation_steps": t.gradient_accumulation_steps,
        "training.max_length": t.max_length,
        "training.logging_steps": t.logging_steps,
        "training.learning_rate": t.learning_rate,
    }
    for key, value in positive.items():
        if value is not None and value <= 0:
            problems.append(Problem(where(key), f"must be > 0, got {value}", "use a positive number"))
    if t.max_steps <= 0 and t.num_train_epochs <= 0:
        problems.append(Problem(where("training.max_steps"), "neither max_steps nor epochs is > 0", "max_steps: 300"))
    if t.bf16 and t.fp16:
        problems.append(Problem(where("training.fp16"), "bf16 and fp16 are both on", "pick one"))
    if not 0 <= config.data.eval_split < 1:
        problems.append(Problem(where("data.eval_split"), "must be in [0, 1)", "e.g. eval_split: 0.1"))
    if not 0 < config.data.fraction <= 1:
        problems.append(Problem(where("data.fraction"), "must be in (0, 1]", "e.g. fraction: 0.5"))


def _check_features(config: TaskConfig, where, problems: list[Problem]) -> None:
    """Early stopping, the eval suite, packing and quantization: what each needs, and what excludes what."""
    if config.early_stopping and not (config.data.eval or config.data.eval_split):
        problems.append(Problem(where("early_stopping"), "needs eval data", "add data.eval or data.eval_split"))
    if config.early_stopping and config.training.eval_strategy == "no":
        problems.append(Problem(where("early_stopping"), "needs evaluations", "set training.eval_strategy: steps"))
    if config.eval_suite and not config.eval_suite.file:
        problems.append(Problem(where("eval_suite.file"), "missing", "e.g. eval_suite: {file: data/test.jsonl}"))
    if config.eval_suite and config.eval_suite.json_field and not config.eval_suite.expected_field:
        problems.append(
            Problem(
                where("eval_suite.json_field"),
                "needs eval_suite.expected_field, the column holding the value that field must equal",
                "e.g. eval_suite: {file: data/test.jsonl, expected_field: intent, json_field: intent}",
            )
        )
    if config.task == "classification" and config.training.packing:
        problems.append(Problem(where("training.packing"), "packing does not apply to classification", "remove it"))
    q = config.quantization
    if q and q.load_in_4bit and q.load_in_8bit:
        problems.append(Problem(where("quantization"), "4-bit and 8-bit are both on", "pick one"))


def _check_lora(config: TaskConfig, where, problems: list[Problem]) -> None:
    """The adapter's own values; builtin:tiny's layers are known here, so its target_modules are checked too (any
    other model's are checked where it is at hand: validate on the laptop, the trainer on the host)."""
    if not config.lora:
        return
    if config.lora.r <= 0:
        problems.append(Problem(where("lora.r"), "must be > 0", "typical: 8, 16, 32"))
    if not 0 <= config.lora.dropout < 1:
        problems.append(Problem(where("lora.dropout"), "must be in [0, 1)", "typical: 0.05"))
    if config.base_model == TINY_BASE_MODEL:
        check_target_modules(config, tiny_module_names(), TINY_BASE_MODEL, where, problems)


def _check_encoding(config: TaskConfig, where, problems: list[Problem]) -> None:
    try:
        codecs.lookup(config.data.encoding)
    except LookupError:
        hint = "e.g. utf-8, cp1252 or latin-1"
        problems.append(Problem(where("data.encoding"), f"unknown encoding {config.data.encoding!r}", hint))


# The Hugging Face Hub's rule for a repo id: [owner/]name, each of A-Z a-z 0-9 _ . - and at most 96 long.
HUB_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def _model_name_ok(name: str) -> bool:
    """A hub id or something that can be a path on the host (checked there: the laptop cannot see it)."""
    if any(ord(c) < 32 for c in name) or len(name) > 4096:
        return False
    return name.startswith(("/", "~", "./", "../")) or name.count("/") > 1 or bool(HUB_ID.fullmatch(name))


def _check_numbers(config: TaskConfig, where, problems: list[Problem]) -> None:
    """Values the trainer would refuse (or silently misuse) once the run has started on the host."""
    t = config.training
    at_least_zero = {
        "training.warmup_steps": t.warmup_steps,
        "training.weight_decay": t.weight_decay,
        "training.max_grad_norm": t.max_grad_norm,
        "training.save_total_limit": t.save_total_limit,
        "samples": config.samples,
        "preference.beta": config.preference.beta,
    }
    if config.early_stopping:
        at_least_zero["early_stopping.threshold"] = config.early_stopping.threshold
    for key, value in at_least_zero.items():
        if value is not None and value < 0:
            problems.append(Problem(where(key), f"must be >= 0, got {value:g}", "use 0 or a positive number"))
    positive = {"training.eval_steps": t.eval_steps, "training.save_steps": t.save_steps}
    if config.early_stopping:
        positive["early_stopping.patience"] = config.early_stopping.patience
    if config.eval_suite:
        positive["eval_suite.max_new_tokens"] = config.eval_suite.max_new_tokens
        positive["eval_suite.limit"] = config.eval_suite.limit
    if config.lora:
        positive["lora.alpha"] = config.lora.alpha
    for key, value in positive.items():
        if value is not None and value <= 0:
            problems.append(Problem(where(key), f"must be > 0, got {value:g}", "use a positive number"))
    low, high = SEED_RANGE
    for key, value in (("training.seed", t.seed), ("data.seed", config.data.seed)):
        if value is not None and not low <= value <= high:
            problems.append(Problem(where(key), f"must be in [{low}, {high}], got {value}", "e.g. seed: 42"))


def _check_schedule(config: TaskConfig, where, problems: list[Problem]) -> None:
    """lr_scheduler_kwargs against what the chosen scheduler takes (SCHEDULER_KWARGS)."""
    t = config.training
    accepted = SCHEDULER_KWARGS.get(t.lr_scheduler_type)
    if accepted is None:
        return  # an unknown scheduler is reported already
    for key, value in t.lr_scheduler_kwargs.items():
        dotted = f"training.lr_scheduler_kwargs.{key}"
        if key not in accepted:
            if accepted:
                close = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.6)
                hint = f"did you mean `{close[0]}`?" if close else f"it takes: {', '.join(accepted)}"
            else:
                hint = "remove lr_scheduler_kwargs (it would be ignored), or pick a scheduler that takes it"
            takes = "takes no arguments" if not accepted else f"does not take `{key}`"
            problems.append(Problem(where(dotted), f"{t.lr_scheduler_type} {takes}", hint))
            continue
        kind = accepted[key]
        if kind in ("number", "int"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (kind == "number" or float(value).is_integer())
            if not ok:
                problems.append(
                    Problem(
                        where(dotted),
                        f"expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}",
                        "e.g. 0.1" if kind == "number" else "e.g. 10",
                    )
                )
            elif value < 0:
                problems.append(Problem(where(dotted), f"must be >= 0, got {value!r}", "use 0 or a positive number"))
        elif value not in kind.split("|"):
            problems.append(Problem(where(dotted), f"{value!r} is not allowed", f"one of: {kind.replace('|', ', ')}"))
    kwargs = t.lr_scheduler_kwargs
    if t.lr_scheduler_type == "cosine_with_min_lr" and "min_lr" in kwargs and "min_lr_rate" in kwargs:
        problems.append(
            Problem(where("training.lr_scheduler_kwargs"), "min_lr and min_lr_rate exclude each other", "keep one")
        )
    if t.lr_scheduler_type == "polynomial" and isinstance(kwargs.get("lr_end"), (int, float)):
        if kwargs["lr_end"] >= t.learning_rate:
            hint = f"lr_end must be below learning_rate ({t.learning_rate:g})"
            problems.append(Problem(where("training.lr_scheduler_kwargs.lr_end"), "not below the learning rate", hint))
    if t.lr_scheduler_type == "warmup_stable_decay" and t.max_steps <= 0 and "num_decay_steps" not in kwargs:
        hint = "set lr_scheduler_kwargs: {num_decay_steps: N}, or training.max_steps (a tenth of it decays)"
        problems.append(Problem(where("training.lr_scheduler_type"), "warmup_stable_decay needs num_decay_steps", hint))
    if t.lr_scheduler_type == "reduce_lr_on_plateau" and (
        t.eval_strategy == "no" or not (config.data.eval or config.data.eval_split)
    ):
        hint = "add data.eval (or data.eval_split) and training.eval_strategy: steps"
        problems.append(Problem(where("training.lr_scheduler_type"), "reduce_lr_on_plateau needs evaluations", hint))


def _check_checkpoints(config: TaskConfig, where, problems: list[Problem]) -> None:
    """Early stopping and load_best_model_at_end reload the best checkpoint: one must be saved at each evaluation."""
    t = config.training
    if not (config.early_stopping or t.load_best_model_at_end):
        return
    if t.eval_strategy == "no" or not (config.data.eval or config.data.eval_split):
        return  # no evaluation: nothing to pick the best by (early stopping without evals is reported above)
    key = "early_stopping" if config.early_stopping else "training.load_best_model_at_end"
    if t.save_strategy != t.eval_strategy:
        problems.append(
            Problem(
                where(key),
                f"needs a checkpoint at every evaluation, but save_strategy is {t.save_strategy!r} "
                f"and eval_strategy {t.eval_strategy!r}",
                f"set training.save_strategy: {t.eval_strategy}",
            )
        )
    elif t.eval_strategy == "steps" and t.eval_steps > 0 and t.save_steps % t.eval_steps:
        hint = f"e.g. save_steps: {t.eval_steps * max(1, round(t.save_steps / t.eval_steps))}"
        message = f"needs save_steps ({t.save_steps}) to be a multiple of eval_steps ({t.eval_steps})"
        problems.append(Problem(where(key), message, hint))


def _check_data_paths(config: TaskConfig, where, problems: list[Problem]) -> None:
    """Only the task folder is pushed: a data file elsewhere would be missing on the host."""
    named = [(f"data.{split}", name) for split in ("train", "eval", "test") for name in getattr(config.data, split)]
    if config.eval_suite and config.eval_suite.file:
        named.append(("eval_suite.file", config.eval_suite.file))
    for key, name in named:
        if name.startswith("hub:"):
            continue
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
            problems.append(
                Problem(
                    where(key),
                    f"{name} is outside the task folder, and only the task folder is pushed",
                    "move or copy the file into the task folder (a symlink there is pushed as the file's content)",
                )
            )


def _check_distributed(config: TaskConfig, where, problems: list[Problem]) -> None:
    d = config.distributed
    example = "distributed: {strategy: deepspeed, deepspeed: ds_zero3.json}"
    if d.strategy == "deepspeed" and not d.deepspeed:
        problems.append(Problem(where("distributed.deepspeed"), "strategy deepspeed needs a DeepSpeed config", example))
    if d.deepspeed and d.strategy != "deepspeed":
        message = f"a DeepSpeed config is only used with strategy deepspeed (strategy is {d.strategy})"
        problems.append(Problem(where("distributed.deepspeed"), message, "set distributed.strategy: deepspeed"))
    if d.deepspeed and (os.path.isabs(d.deepspeed) or os.path.normpath(d.deepspeed).split(os.sep)[0] == ".."):
        message = f"{d.deepspeed} is outside the task folder, and only the task folder is pushed"
        problems.append(Problem(where("distributed.deepspeed"), message, "move the JSON into the task folder"))
    q = config.quantization
    if d.strategy == "fsdp" and q and q.load_in_8bit:
        # bitsandbytes stores 8-bit weights as int8, which FSDP cannot shard; 4-bit ones can be stored as floats.
        message = "FSDP cannot shard 8-bit weights"
        problems.append(Problem(where("quantization.load_in_8bit"), message, "use quantization.load_in_4bit (QLoRA)"))


def deepspeed_file_problems(config: TaskConfig, task_dir: Path, where=lambda key: key) -> list[Problem]:
    """The DeepSpeed config must be at hand and be a JSON object: DeepSpeed would fail on it only once the model is
    loaded. Run on the laptop (validate) and again on the host (the file pushed is the one used)."""
    d = config.distributed
    if d.strategy != "deepspeed" or not d.deepspeed:
        return []

    def problem(message: str, hint: str) -> list[Problem]:
        return [Problem(where("distributed.deepspeed"), message, hint)]

    path = Path(task_dir) / d.deepspeed
    if not path.is_file():
        return problem(f"{d.deepspeed}: no such file in {task_dir}", "see README: Models that do not fit on one GPU")
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return problem(f"{d.deepspeed} is not valid JSON: {str(exc).splitlines()[0]}", "fix the JSON")
    if not isinstance(parsed, dict):
        return problem(f"{d.deepspeed} must be a JSON object", 'e.g. {"zero_optimization": {"stage": 3}}')
    zero = parsed.get("zero_optimization")
    stage = zero.get("stage") if isinstance(zero, dict) else None
    if stage is not None and (isinstance(stage, bool) or stage not in (0, 1, 2, 3)):
        hint = "ZeRO-2 shards optimizer state and gradients, ZeRO-3 the weights too"
        return problem(f"{d.deepspeed}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}", hint)
    return []


def check_target_modules(config: TaskConfig, module_names, model: str, where, problems: list[Problem]) -> None:
    """Every lora.target_modules name must name layers of the model as PEFT matches them (a module's full
    name, or its last dotted parts). PEFT itself fails only when none matches and skips a misspelt one."""
    if config.lora is None or config.lora.target_modules == ["all-linear"]:
        return
    names = list(module_names)
    leaves = sorted({n.rpartition(".")[2] for n in names})
    for target in config.lora.target_modules:
        if any(n == target or n.endswith("." + target) for n in names):
            continue
        close = difflib.get_close_matches(target.rpartition(".")[2], leaves, n=1, cutoff=0.6)
        layers = f"its layers: {', '.join(leaves)}, or all-linear"
        hint = f"did you mean `{close[0]}`? ({layers})" if close else layers
        problems.append(Problem(where("lora.target_modules"), f"{model} has no module {target!r}", hint))


def _check_report(config: TaskConfig, where, problems: list[Problem]) -> None:
    import difflib

    from trainer.task.schema import TRACKERS

    for name in config.report:
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, TRACKERS, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"one or more of: {', '.join(TRACKERS)}"
            problems.append(Problem(where("report"), f"{name!r} is not a tracker gpurun reports to", hint))
