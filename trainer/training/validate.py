"""`python -m trainer validate TASK_DIR [--set K=V]... [--exp NAME] [--show N]`: the token-level checks.

The launcher runs this in a subprocess when the training stack is installed on the laptop (it
never imports transformers itself), and the trainer runs the same checks on the host before
training. Prints one JSON object: problems, notices, length report and mask previews.
"""

import argparse
import json
from pathlib import Path

from trainer.builtin.tiny import default_cache_dir, is_builtin
from trainer.task.loading import load_task
from trainer.task.problems import Problem, TaskError
from trainer.task.rules import check_target_modules
from trainer.task.schema import TaskConfig
from trainer.task.splits import load_task_data


def local_tokenizer(config: TaskConfig, cache_fallback: Path | None = None):
    """The task's tokenizer if it can be had without a download (builtin, a local path, or the HF cache)."""
    from transformers import AutoTokenizer

    from trainer.training.model import load_tokenizer, resolve_base_model

    if is_builtin(config.base_model):
        return load_tokenizer(resolve_base_model(config, default_cache_dir(fallback=cache_fallback)))
    if _is_dir(config.base_model):
        return load_tokenizer(str(Path(config.base_model).expanduser()))
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.base_model, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached here: the host checks it
        return None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _is_dir(name: str) -> bool:
    try:
        return Path(name).expanduser().is_dir()
    except (OSError, RuntimeError):  # a name too long for a path, or a ~user that does not exist: not a folder
        return False


def module_problems(config: TaskConfig, name_or_path: str, local_only: bool = False) -> list[Problem]:
    """lora.target_modules against the model's own layers, from its config.json alone: the model is built
    on the meta device (no weights, no memory), so on the host this runs before the weights download.
    Nothing is said when the config cannot be had (not cached here; custom code): the host checks it."""
    if config.lora is None or config.lora.target_modules == ["all-linear"]:
        return []
    names = adaptable_module_names(config, name_or_path, local_only)
    if names is None:
        return []
    problems: list[Problem] = []
    check_target_modules(config, names, config.base_model, lambda key: key, problems)
    return problems


def adaptable_module_names(config: TaskConfig, name_or_path: str, local_only: bool = False) -> list[str] | None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.pytorch_utils import Conv1D

    try:
        model_config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_only)
        auto = AutoModelForSequenceClassification if config.task == "classification" else AutoModelForCausalLM
        with torch.device("meta"):
            model = auto.from_config(model_config)
    except Exception:  # noqa: BLE001 - not at hand, or custom code: loading the model says what is wrong
        return None
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer validate")
    parser.add_argument("task_dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--exp")
    parser.add_argument("--show", type=int, default=0)
    args = parser.parse_args(argv)
    out: dict = {"problems": [], "notices": []}
    try:
        config = load_task(args.task_dir, args.overrides, args.exp, notices=out["notices"])
        splits = load_task_data(Path(args.task_dir), config)
    except TaskError as exc:
        out["problems"] = [{"where": p.where, "message": p.message, "hint": p.hint} for p in exc.problems]
        print(json.dumps(out))
        return 0
    tokenizer = local_tokenizer(config)
    if tokenizer is None:
        out["notices"].append(f"tokenizer of {config.base_model} is not on this machine: token checks run on the host")
        print(json.dumps(out))
        return 0
    from trainer.training.tokens import token_report

    rows = splits["train"] + splits["eval"]
    report = token_report(rows, tokenizer, config, show=args.show, train_rows=len(splits["train"]))
    problems = report.problems + module_problems(config, tokenizer.name_or_path, local_only=True)
    out["problems"] = [{"where": p.where, "message": p.message, "hint": p.hint} for p in problems]
    out["lengths"] = report.percentiles()
    out["rows"] = len(report.lengths)
    out["truncated"] = report.truncated
    out["lost_trained"] = report.lost_trained  # examples whose trained tokens max_length cuts off
    out["suggested_max_length"] = report.suggested_max_length()
    out["dropped"] = len(report.dropped)  # rows of which every trained token lies beyond max_length: not trained
    out["dropped_rows"] = report.dropped_where
    out["dropped_keep_max_length"] = max(report.dropped_lengths, default=None)  # the max_length keeping them whole
    if report.dropped:
        out["notices"].append(report.dropped_notice(config.training.max_length))
    out["max_length"] = config.training.max_length
    out["eot_token"] = report.eot_token
    out["eot_trained"] = report.eot_trained
    out["previews"] = report.previews
    print(json.dumps(out, ensure_ascii=False))
    return 0
