"""The memory pre-flight of a run on its host: the model's shape from its config.json, the longest row from the
tokenized data, free memory from CUDA; the formula itself is trainer/training/memory.py."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from trainer.task.problems import Problem
from trainer.task.schema import TaskConfig
from trainer.training.memory import GB, Estimate, ModelShape, advice, estimate, setup_for


@dataclass
class Preflight:
    line: str  # train.log's `memory:` line
    estimate: Estimate
    free: float | None  # bytes free on this process's GPU; None on the CPU
    refusal: Problem | None = None

    def event(self) -> dict:
        """The `memory` event's fields (bytes)."""
        return {**asdict(self.estimate), "total": self.estimate.total, "free": self.free}


def model_shape(name_or_path: str) -> ModelShape | None:
    """From config.json alone (on the host, before the weights download); None for what the formula does not know."""
    from transformers import AutoConfig

    try:
        return ModelShape.from_config(AutoConfig.from_pretrained(name_or_path).to_dict())
    except Exception:  # noqa: BLE001 - not a decoder it knows (no intermediate_size...), or not at hand: say nothing
        return None


def longest_row(tokenized) -> int:
    """The longest training row's tokens, from the Arrow column (no Python lists)."""
    import pyarrow.compute as pc

    column = tokenized.train.data.column("input_ids")
    return int(pc.max(pc.list_value_length(column)).as_py() or 0)


def memory_preflight(config: TaskConfig, base: str, tokenized, world: int, force: bool) -> Preflight | None:
    """None when there is nothing to estimate (not SFT, a model the formula does not know)."""
    import torch

    from trainer.training.model import shards_weights
    from trainer.training.recipes import on_this_machine

    if config.task != "sft" or tokenized is None:
        return None
    shape = model_shape(base)
    if shape is None:
        return None
    cuda = torch.cuda.is_available()
    shards = world if shards_weights(config) else 1
    resolved = on_this_machine(config)
    setup = setup_for(resolved, longest_row(tokenized), cuda, shards)
    guess = estimate(shape, setup)
    if not cuda:
        return Preflight(f"{guess.line()} per process (estimate; CPU)", guess, None)
    device = int(os.environ.get("LOCAL_RANK", "0"))
    free = float(torch.cuda.mem_get_info(device)[0])
    line = guess.line(free, f"GPU {device}")
    if guess.total <= free or force:
        return Preflight(line + (" (--force)" if guess.total > free else ""), guess, free)
    changes = advice(shape, setup, resolved.training.gradient_accumulation_steps, free)
    return Preflight(line, guess, free, unfit(guess.total, free, changes))


def unfit(needed: float, free: float, changes: list[str]) -> Problem:
    hint = "; or ".join(changes) + "; or start anyway with --force"
    return Problem(
        "memory", f"the run needs about {needed / GB:.1f} GB a GPU and {free / GB:.1f} GB are free", f"try {hint}"
    )
