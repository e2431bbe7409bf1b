"""Out of memory in training does not end the run (issue 15 item 2): the trainer records a split with half the
per-device batch and twice the accumulation (SPLIT_FILE) and exits EXIT_OOM_RESTART; the wrapper starts it again, and
it continues from its latest complete checkpoint (or from the start) with that split. The effective batch, the
schedule and the step count stay what they were. A restart is a new process (or, under torchrun, a new group): every
rank takes the new split, and the memory the failed step held is gone with the process. At one row per device there
is nothing left to halve: the run fails with the memory pre-flight's advice.

GPURUN_TEST_OOM_TOKENS=N (tests, and anyone checking this path on a CPU): the model's forward raises
torch.OutOfMemoryError whenever a batch holds more than N tokens (not counting padding).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainer.events import EventWriter
from trainer.host.files import write_atomic
from trainer.rundir import EVENTS_FILE, EXIT_OOM_RESTART, SPLIT_FILE
from trainer.task.schema import TaskConfig

OOM_TOKENS_ENV = "GPURUN_TEST_OOM_TOKENS"


def apply_split(run_dir: Path, config: TaskConfig) -> dict | None:
    """The split recorded by an out-of-memory restart, applied to the config; None when there was none."""
    try:
        split = json.loads((run_dir / SPLIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    t = config.training
    t.per_device_train_batch_size = split["per_device_train_batch_size"]
    t.gradient_accumulation_steps = split["gradient_accumulation_steps"]
    return split


def smaller_split(batch: int, accumulation: int) -> tuple[int, int] | None:
    """The largest per-device batch below `batch` that divides it (half, for an even one), with the accumulation
    that keeps batch x accumulation; None at one row."""
    for smaller in range(batch // 2, 0, -1):
        if batch % smaller == 0:
            return smaller, accumulation * (batch // smaller)
    return None


def out_of_memory(run_dir: Path, config: TaskConfig, step: int, rank: int) -> int:
    """What the run does when a step ran out of memory: the exit code it ends this process with. Said in
    events.jsonl by whichever rank it was (a rank other than 0 writes no other event)."""
    events = EventWriter(run_dir / EVENTS_FILE)
    t = config.training
    batch, accumulation = t.per_device_train_batch_size, t.gradient_accumulation_steps
    smaller = smaller_split(batch, accumulation)
    if smaller is None:
        message = f"out of memory at step {step} with one row per device: nothing left to halve"
        hint = "turn on gradient checkpointing, QLoRA, or a shorter max_length (gpurun validate --gpu-memory SIZE)"
        print(f"error: {message}", flush=True)
        print(f"hint: {hint}", flush=True)
        events.emit("error", message=message, hint=hint, problems=[message])
        return 1
    new_batch, new_accumulation = smaller
    said = (
        f"out of memory at step {step}: per-device batch {batch} -> {new_batch}, accumulation {accumulation} -> "
        f"{new_accumulation} (effective batch {batch * accumulation} unchanged); restarting from the latest checkpoint"
    )
    print(said, flush=True)
    # Whichever rank ran out writes the split (the same from any rank: it follows from the config) and says so:
    # the others never learn of it here, torchrun ends them, and the whole group restarts reading the file.
    split = {"per_device_train_batch_size": new_batch, "gradient_accumulation_steps": new_accumulation}
    write_atomic(run_dir / SPLIT_FILE, json.dumps({**split, "after_step": step}))
    events.emit("oom", step=step, rank=rank, **split, was=[batch, accumulation])
    return EXIT_OOM_RESTART


def inject_oom(model) -> None:
    """GPURUN_TEST_OOM_TOKENS: a forward over more than N (unpadded) tokens raises torch.OutOfMemoryError."""
    limit = os.environ.get(OOM_TOKENS_ENV)
    if not limit:
        return
    import torch

    def check(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else (ids.numel() if ids is not None else 0)
        if torch.is_grad_enabled() and tokens > int(limit):
            raise torch.OutOfMemoryError(f"{OOM_TOKENS_ENV}: a batch of {tokens} tokens (more than {limit})")

    model.register_forward_pre_hook(check, with_kwargs=True)
