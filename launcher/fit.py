"""`gpurun validate --device cpu` / `--gpu-memory 24GB`: the memory pre-flight's estimate on the laptop, from the base
model's config.json (builtin:tiny's shipped one, a local folder's, or the Hugging Face cache's) and the longest row the
token checks found (max_length without them). The host says the same before every run (trainer/training/fitting.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from launcher.errors import GpurunError
from trainer.task.schema import TaskConfig
from trainer.training.memory import GB, ModelShape, advice, estimate, setup_for

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(g|gb|gib|m|mb|mib)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> float:
    """'24GB', '80 GiB', '24' (GB), '500MB' as bytes."""
    found = _SIZE.match(text)
    if not found:
        raise GpurunError(f"--gpu-memory: {text!r} is not a size", "give it as 24GB, 80GiB or 500MB")
    number, unit = float(found.group(1)), (found.group(2) or "g").lower()
    return number * (GB if unit.startswith("g") else 1024**2)


def base_config_json(base_model: str) -> dict | None:
    from trainer.builtin.tiny import SHIPPED_TINY_DIR, is_builtin

    if is_builtin(base_model):
        path = SHIPPED_TINY_DIR / "config.json"
    elif Path(base_model).expanduser().is_dir():
        path = Path(base_model).expanduser() / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        cached = try_to_load_from_cache(base_model, "config.json")
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def memory_line(config: TaskConfig, longest: int | None, device: str, gpu_memory: str | None) -> str:
    """The estimate's line; a GpurunError with the changes that would fit when it exceeds `gpu_memory`."""
    found = base_config_json(config.base_model)
    shape = None
    if found is not None:
        try:
            shape = ModelShape.from_config(found)
        except (KeyError, TypeError, ValueError):
            shape = None
    if shape is None:
        return (
            f"memory: no estimate: {config.base_model}'s config.json is not at hand here, or not a decoder the formula"
            " knows (the host estimates it before the run)"
        )
    cuda = device == "cuda" or gpu_memory is not None
    t = config.training
    if t.bf16 is None:  # as on_this_machine decides it: bf16 and checkpointing on a GPU, neither on the CPU
        t.bf16 = cuda and not t.fp16
    if t.gradient_checkpointing is None:
        t.gradient_checkpointing = cuda
    setup = setup_for(config, longest or t.max_length, cuda)
    guess = estimate(shape, setup)
    where = "per GPU" if cuda else "per process, on the CPU"
    if gpu_memory is None:
        return f"memory: {guess.line()} {where} (estimate)"
    free = parse_size(gpu_memory)
    line = f"memory: {guess.line(free)} (estimate)"
    if guess.total <= free:
        return line
    changes = advice(shape, setup, t.gradient_accumulation_steps, free)
    raise GpurunError(
        f"memory: the run needs about {guess.total / GB:.1f} GB a GPU and {free / GB:.1f} GB are free",
        "try " + "; or ".join(changes) + "; or start anyway with gpurun train --force",
        details=[line],
    )
