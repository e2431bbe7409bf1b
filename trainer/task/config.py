"""The task schema: `task.yaml` -> TaskConfig. Pure Python + PyYAML, imported by both sides.

The laptop validates a task completely with this module before a byte is pushed; the host runs
the very same code again on the resolved config. Every problem is collected and reported at once,
each naming the file, the line and the key, with a hint.
"""

import codecs
import dataclasses
import difflib
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TASK_FILE = "task.yaml"
TASK_KINDS = ("sft", "orpo", "dpo", "classification")
DATA_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_response", "text", "preference", "classification")
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
)
STRATEGIES = ("no", "steps", "epoch")
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp", "deepspeed")
SEED_RANGE = (0, 2**32 - 1)  # numpy's seed, which transformers' set_seed also sets, takes no more

# What each scheduler accepts in lr_scheduler_kwargs: transformers' get_scheduler passes them on to the
# schedule function (its signature, minus what the Trainer fills in itself), or drops them silently for
# the constant ones. Kept here as data so the laptop checks without torch; a test holds this table
# against the installed transformers' and torch's signatures. Value: key -> the kind of value it takes.
SCHEDULER_KWARGS: dict[str, dict[str, str]] = {
    "linear": {},
    "cosine": {"num_cycles": "number"},
    "cosine_with_restarts": {"num_cycles": "number"},
    "polynomial": {"lr_end": "number", "power": "number"},
    "constant": {},
    "constant_with_warmup": {},
    "inverse_sqrt": {"timescale": "int"},
    "reduce_lr_on_plateau": {
        "mode": "min|max",
        "factor": "number",
        "patience": "int",
        "threshold": "number",
        "threshold_mode": "rel|abs",
        "cooldown": "int",
        "min_lr": "number",
        "eps": "number",
    },
    "cosine_with_min_lr": {"num_cycles": "number", "min_lr": "number", "min_lr_rate": "number"},
    # num_stable_steps is left out: the Trainer always passes num_training_steps, and the two exclude each other.
    "warmup_stable_decay": {
        "num_decay_steps": "int",
        "warmup_type": "linear|cosine|1-sqrt",
        "decay_type": "linear|cosine|1-sqrt",
        "min_lr_ratio": "number",
        "num_cycles": "number",
    },
}
TINY_LAYERS = 2  # builtin:tiny's decoder layers (tiny_module_names); a test holds it to the real model


@dataclass
class Problem:
    """One thing wrong with a task, located as precisely as we can."""

    where: str  # "tasks/hr/task.yaml:12" or "tasks/hr/data/train.jsonl:40"
    message: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class TaskError(Exception):
    """Raised with every problem found, so the user fixes them all in one go."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def choice(*values: str, default: Any = None) -> Any:
    return field(default=default, metadata={"choices": values})


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)
    """Training files (JSONL, JSON, CSV, Parquet), relative to the task dir, or `hub:owner/name[:split]`."""
    eval: list[str] = field(default_factory=list)
    """Evaluation files; empty means split `eval_split` off the training data."""
    test: list[str] = field(default_factory=list)
    """Held-out files for the sample generations and the eval suite."""
    format: str = choice(*DATA_FORMATS, default="auto")
    """Row format; `auto` detects it per file and rejects a mix."""
    encoding: str = "utf-8"
    """Text encoding of the data files: utf-8, or e.g. cp1252 / latin-1 for a CSV saved by a spreadsheet."""
    eval_split: float = 0.0
    """Fraction of the training rows held out for evaluation when `eval` is empty."""
    prompt_column: str = "prompt"
    """Column holding the prompt in prompt/response data."""
    response_column: str = "response"
    """Column holding the response in prompt/response data."""
    system_prompt: str = ""
    """System message prepended to every conversation that has none."""
    fraction: float = 1.0
    """Use only this fraction of the training rows (after shuffling)."""
    shuffle: bool = True
    """Shuffle the training rows before use."""
    seed: int = 42
    """Seed for shuffling and splitting."""


@dataclass
class LoraConfig:
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (effective scale alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA branch."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt, or `all-linear`."""
    bias: str = choice("none", "all", "lora_only", default="none")
    """Which biases to train."""


@dataclass
class QuantizationConfig:
    load_in_4bit: bool = False
    """QLoRA: load the base model in 4 bit."""
    load_in_8bit: bool = False
    """Load the base model in 8 bit."""
    bnb_4bit_quant_type: str = choice("nf4", "fp4", default="nf4")
    """4-bit data type."""
    bnb_4bit_use_double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bit/param)."""
    bnb_4bit_compute_dtype: str = choice("bfloat16", "float16", "float32", default="bfloat16")
    """Dtype the 4-bit matmuls compute in."""


@dataclass
class TrainingConfig:
    num_train_epochs: float = 3.0
    """Epochs; ignored when `max_steps` > 0."""
    max_steps: int = -1
    """Total optimizer steps; -1 means use epochs."""
    per_device_train_batch_size: int = 4
    """Rows per device per forward pass."""
    per_device_eval_batch_size: int = 4
    """Rows per device per eval pass."""
    gradient_accumulation_steps: int = 1
    """Forward passes per optimizer step."""
    learning_rate: float = 2e-4
    """Peak learning rate (2e-4 suits LoRA; full fine-tunes want ~2e-5)."""
    lr_scheduler_type: str = choice(*SCHEDULERS, default="cosine")
    """Learning-rate schedule."""
    warmup_steps: float = 0.0
    """Warmup: steps, or a fraction of the total when below 1."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    optim: str = choice(*OPTIMIZERS, default="adamw_torch_fused")
    """Optimizer; the default is transformers 5's: AdamW's fused kernel (on a GPU and on the CPU alike)."""
    gradient_checkpointing: bool | None = None
    """Trade compute for memory; unset: on with a GPU (TRL's default), off on the CPU (no memory to save)."""
    bf16: bool | None = None
    """Train in bfloat16; unset: on with a GPU that has it and fp16 off (TRL's default), off on the CPU."""
    fp16: bool = False
    """Train in float16."""
    max_length: int = 1024
    """Longest tokenized example; longer ones are truncated."""
    packing: bool = False
    """Pack several short examples into one sequence."""
    padding_free: bool = False
    """Batch without padding (flattened sequences with position ids)."""
    lr_scheduler_kwargs: dict = field(default_factory=dict)
    """Extra scheduler arguments, e.g. {min_lr_rate: 0.1} for cosine_with_min_lr."""
    logging_steps: int = 10
    """Log loss and learning rate every N steps."""
    eval_strategy: str = choice(*STRATEGIES, default="steps")
    """When to evaluate."""
    eval_steps: int = 50
    """Evaluate every N steps (with eval_strategy: steps)."""
    save_strategy: str = choice(*STRATEGIES, default="steps")
    """When to save a checkpoint."""
    save_steps: int = 100
    """Checkpoint every N steps (with save_strategy: steps)."""
    save_total_limit: int = 3
    """Keep at most N checkpoints."""
    load_best_model_at_end: bool = False
    """Reload the best checkpoint (by `metric_for_best_model`) when training ends."""
    metric_for_best_model: str = "eval_loss"
    """Metric that picks the best checkpoint."""
    seed: int = 42
    """Seed for initialisation and data order."""


@dataclass
class PreferenceConfig:
    beta: float = 0.1
    """ORPO's odds-ratio weight / DPO's KL weight."""
    loss_type: str = choice("sigmoid", "ipo", "hinge", default="sigmoid")
    """DPO loss."""


@dataclass
class EarlyStoppingConfig:
    patience: int = 3
    """Evaluations without improvement before training stops."""
    threshold: float = 0.0
    """Smallest change in the metric that counts as an improvement."""


@dataclass
class EvalSuiteConfig:
    file: str = ""
    """Rows (chat `messages` ending with the assistant's answer) to generate on after training."""
    expected_field: str = ""
    """Column holding the expected answer. Unset: each row's answer is a tool call (the last assistant turn's
    first call), scored on the function's name and on its arguments."""
    json_field: str = ""
    """With expected_field: compare this field of the reply, parsed as a JSON object (an intent router answering
    {"intent": ...}: `json_field: intent`), instead of the whole reply."""
    max_new_tokens: int = 64
    """Generation budget per row."""
    limit: int = 200
    """Use at most this many rows."""


@dataclass
class DistributedConfig:
    strategy: str = choice(*DISTRIBUTED_STRATEGIES, default="ddp")
    """How several GPUs share a run: ddp (each holds the whole model), fsdp (each holds a shard of every decoder
    layer: PyTorch FSDP2 through transformers), deepspeed (ZeRO, as the `deepspeed` JSON says). fsdp and deepspeed
    need CUDA GPUs."""
    deepspeed: str = ""
    """With strategy deepspeed: the DeepSpeed config, a JSON file inside the task folder (e.g. ds_zero3.json)."""


@dataclass
class TaskConfig:
    base_model: str = ""
    """Hub id, local path, or `builtin:tiny` (a tiny random model built on the spot)."""
    task: str = choice(*TASK_KINDS, default="sft")
    """What to train: sft, orpo, dpo or classification."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the rows are and what they look like."""
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    """LoRA adapter; `lora: null` means a full fine-tune."""
    quantization: QuantizationConfig | None = None
    """Load the base model quantized (QLoRA)."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Optimizer, schedule, batch sizes, logging, checkpoints."""
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    """ORPO / DPO settings."""
    early_stopping: EarlyStoppingConfig | None = None
    """Stop when the eval metric stops improving (needs eval data)."""
    eval_suite: EvalSuiteConfig | None = None
    """After training: generate on a test file and score the replies (tool calls: name and arguments)."""
    samples: int = 3
    """Sample generations on eval prompts written to output/samples.jsonl after training."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """How several GPUs share the model: ddp, or fsdp / deepspeed for a model that does not fit on one GPU."""


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
    raw, lines = _read_yaml(path)
    if experiment:
        exp_path = task_dir / "experiments" / f"{experiment}.yaml"
        if not exp_path.is_file():
            known = sorted(p.stem for p in (task_dir / "experiments").glob("*.yaml"))
            raise TaskError(
                [Problem(str(exp_path), "no such experiment", f"known experiments: {', '.join(known) or 'none'}")]
            )
        overlay, exp_lines = _read_yaml(exp_path)
        raw = deep_merge(raw, overlay)
        lines.update(exp_lines)
    problems: list[Problem] = []
    for key in apply_overrides(raw, overrides, problems):
        lines[key] = "--set"
    where = lambda key: _where(path, lines, key)  # noqa: E731
    return config_from_dict(raw, where=where, notices=notices, problems=problems, task_dir=task_dir)


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], problems: list[Problem]) -> list[str]:
    """Apply `--set KEY=VALUE` items to `raw` in place (values read as YAML); returns the keys set."""
    applied = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(Problem("--set", f"{item!r} is not key=value", "example: --set training.max_steps=300"))
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
    config = _build(TaskConfig, raw, "", where, problems)
    _check_semantics(config, where, problems)
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


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """Parse YAML, and remember the line of every key so errors can point at it."""
    text = decode_text(path.read_bytes(), path, "utf-8")
    if _bracket_depth(text) > MAX_YAML_DEPTH:  # PyYAML takes seconds per thousand levels before it gives up
        hint = "a task is a few levels deep: is this the right file?"
        raise TaskError([Problem(str(path), f"not valid YAML: nested more than {MAX_YAML_DEPTH} levels deep", hint)])
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problem = Problem(f"{path}{line}", f"not valid YAML: {reason}", "check indentation and quoting")
        raise TaskError([problem]) from None
    except RecursionError:
        raise TaskError(
            [Problem(str(path), "not valid YAML: nested too deeply", "a task is a few levels deep")]
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TaskError([Problem(f"{path}:1", "the file must be a mapping of keys", "see README: task.yaml")])
    lines: dict[str, int] = {}
    duplicates: list[Problem] = []
    seen: set[int] = set()  # an alias repeats a node: walk it once (a "billion laughs" file stays cheap)

    def walk(n, prefix):
        if not isinstance(n, yaml.MappingNode) or id(n) in seen:
            return
        seen.add(id(n))
        here: dict[str, int] = {}
        for key_node, value_node in n.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a complex key: the schema reports it as an unknown key
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.value in here and key_node.value != "<<":
                # PyYAML keeps the last one silently: the user edited one and the other wins.
                duplicates.append(
                    Problem(
                        f"{path}:{line}",
                        f"`{key}` appears twice (first on line {here[key_node.value]})",
                        "remove one of them: YAML would keep only the last",
                    )
                )
            here.setdefault(key_node.value, line)
            lines.setdefault(key, line)
            walk(value_node, key)

    walk(node, "")
    if duplicates:
        raise TaskError(duplicates)
    return data, {k: f"{path}:{v}" for k, v in lines.items()}


MAX_YAML_DEPTH = 100


def _bracket_depth(text: str) -> int:
    """How deep [ and { nest outside quoted strings (a cheap upper bound of the YAML's flow nesting)."""
    unquoted = re.sub(r'"(?:\\.|[^"\\])*"|\'[^\']*\'', "", text)
    depth = deepest = 0
    for char in unquoted:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def decode_text(data: bytes, path: Path | str, encoding: str) -> str:
    """Bytes -> text, or a Problem naming the first byte that is not `encoding`, by line and column."""
    try:
        # utf-8-sig: a byte-order mark (Excel and Notepad write one) is not part of the first row
        return data.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start : exc.start + 1].hex()
        hint = (
            "save the file as UTF-8, or set data.encoding (e.g. cp1252 for a CSV saved by Excel on Windows)"
            if str(path).lower().endswith((".csv", ".jsonl", ".json"))
            else "save the file as UTF-8"
        )
        problem = Problem(
            f"{path}:{line}",
            f"not valid {encoding}: byte 0x{byte} at column {column} (byte {exc.start} of the file)",
            hint,
        )
        raise TaskError([problem]) from None


def _where(path: Path, lines: dict[str, str], key: str) -> str:
    probe = key
    while probe:
        if probe in lines:
            return f"{lines[probe]}: {key}" if lines[probe] != "--set" else f"--set {key}"
        probe = probe.rpartition(".")[0]
    return f"{path}: {key}" if key else str(path)


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
    for old, why in IGNORED_KEYS.items():
        if old in raw:
            raw.pop(old)
            notices.append(f"{where(old)}: `{old}` ignored: {why}")
    return raw


def _build(cls, raw: Any, prefix: str, where, problems: list[Problem]):
    if not isinstance(raw, dict):
        problems.append(Problem(where(prefix), f"expected a mapping, got {_kind(raw)}", f"write {prefix}: as keys"))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(fields)}"
            problems.append(Problem(where(dotted), "unknown key", hint))
            continue
        kwargs[key] = _coerce(value, hints[key], fields[key], dotted, where, problems)
    return cls(**kwargs)


def _coerce(value, annotation, fld, dotted, where, problems):
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if value is None:
        if optional:
            return None
        problems.append(Problem(where(dotted), "must not be empty", "give it a value or remove the key"))
        return _default(fld)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, dotted, where, problems)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            hint = "e.g. {min_lr_rate: 0.1}"
            problems.append(Problem(where(dotted), f"expected a mapping, got {_kind(value)}", hint))
            return {}
        return {str(k): v for k, v in value.items()}
    if origin is list:
        items = value if isinstance(value, list) else [value]
        bad = [i for i in items if not isinstance(i, str)]
        if bad:
            problems.append(Problem(where(dotted), "expected a list of strings", f"got {bad[0]!r}"))
        elif any(_not_unicode(i, dotted, where, problems) for i in items):
            return _default(fld)
        return [str(i) for i in items]
    coerced = _scalar(value, annotation)
    if isinstance(coerced, str) and _not_unicode(coerced, dotted, where, problems):
        return _default(fld)
    if coerced is _INVALID:
        problems.append(
            Problem(where(dotted), f"expected {annotation.__name__}, got {value!r}", f"example: {_example(annotation)}")
        )
        return _default(fld)
    if isinstance(coerced, float) and not math.isfinite(coerced):
        problems.append(
            Problem(where(dotted), f"must be a finite number, got {value!r}", f"example: {_example(float)}")
        )
        return _default(fld)
    choices = fld.metadata.get("choices")
    if choices and coerced not in choices:
        close = difflib.get_close_matches(str(coerced), choices, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"one of: {', '.join(choices)}"
        problems.append(Problem(where(dotted), f"{coerced!r} is not allowed", hint))
    return coerced


_INVALID = object()


def _not_unicode(text: str, dotted: str, where, problems: list[Problem]) -> bool:
    """A lone surrogate (YAML's "\\ud800" escape) is no text: nothing could write it out, not even run.json."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        message = f"not valid Unicode: a lone surrogate \\u{ord(text[exc.start]):04x}"
        problems.append(Problem(where(dotted), message, "write the character itself, or a valid surrogate pair"))
        return True
    return False


def _scalar(value, annotation):
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
            return value.lower() in ("true", "yes", "on")
        return _INVALID
    if annotation in (int, float):
        if isinstance(value, bool):
            return _INVALID
        if isinstance(value, str):  # PyYAML reads `1e-5` (no dot) as a string
            try:
                value = float(value.strip().replace("_", ""))
            except ValueError:
                return _INVALID
        if not isinstance(value, (int, float)):
            return _INVALID
        if annotation is int:
            return int(value) if float(value).is_integer() else _INVALID
        return float(value)
    if annotation is str:
        return value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) else _INVALID
    return value


def _example(annotation) -> str:
    return {int: "8", float: "2e-4", bool: "true", str: "a string"}.get(annotation, "see README")


def _default(fld):
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    return None if fld.default is dataclasses.MISSING else fld.default


def _kind(value) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


def _check_semantics(config: TaskConfig, where, problems: list[Problem]) -> None:
    if not config.base_model:
        problems.append(Problem(where("base_model"), "missing", "e.g. base_model: Qwen/Qwen3-4B, or builtin:tiny"))
    elif config.base_model.startswith("builtin:") and config.base_model != "builtin:tiny":
        problems.append(Problem(where("base_model"), f"unknown builtin {config.base_model!r}", "use builtin:tiny"))
    elif not config.base_model.startswith("builtin:") and not _model_name_ok(config.base_model):
        shown = repr(config.base_model[:60]) + ("..." if len(config.base_model) > 60 else "")
        problems.append(
            Problem(
                where("base_model"),
                f"{shown} is neither a hub id (owner/name) nor a path",
                "e.g. Qwen/Qwen3-4B, /models/my-model, ./my-model, or builtin:tiny",
            )
        )
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
    if config.lora:
        if config.lora.r <= 0:
            problems.append(Problem(where("lora.r"), "must be > 0", "typical: 8, 16, 32"))
        if not 0 <= config.lora.dropout < 1:
            problems.append(Problem(where("lora.dropout"), "must be in [0, 1)", "typical: 0.05"))
        if config.base_model == "builtin:tiny":
            check_target_modules(config, tiny_module_names(), "builtin:tiny", where, problems)
    _check_numbers(config, where, problems)
    _check_schedule(config, where, problems)
    _check_checkpoints(config, where, problems)
    _check_data_paths(config, where, problems)
    _check_distributed(config, where, problems)
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


def tiny_module_names() -> list[str]:
    """The layers LoRA can adapt in builtin:tiny (two Qwen2 decoder layers, tied embeddings)."""
    names = ["model.embed_tokens", "lm_head"]
    for i in range(TINY_LAYERS):
        names += [f"model.layers.{i}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        names += [f"model.layers.{i}.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")]
    return names
