"""What the training loop tells events.jsonl and train.log as it goes: the transformers callbacks (logs, evals,
saves, a requested stop) and the progress of the work after the last step (phase events).

trainer/events.py writes the events; this module decides which ones a run emits while it trains.
"""

import time
from pathlib import Path

from trainer.checkpoints import mark_complete
from trainer.events import EventWriter

PHASE_EVERY_S = 0.5  # at most this often a phase event per item (an eval suite can have thousands of rows)


def phase_progress(writer: EventWriter, phase: str, total: int, doing: str):
    """Start a phase of the work after the last step: one readable line in train.log now, and `phase`
    events as its items get done, so `logs -f` shows it moving rather than a bar frozen at 100%.
    Returns `advance(done)`, to call after each item."""
    print(f"[{phase}] {doing}", flush=True)
    writer.emit("phase", phase=phase, done=0, total=total)
    last = [time.monotonic()]

    def advance(done: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= PHASE_EVERY_S:
            last[0] = now
            writer.emit("phase", phase=phase, done=done, total=total)

    return advance


def human_line(kind: str, step: int, total: int, logs: dict) -> str:
    shown = ("loss", "eval_loss", "learning_rate", "grad_norm", "train_loss", "train_runtime")
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items() if k in shown]
    return f"[{kind}] step {step}/{total} " + " ".join(parts)


def peak_memory_gb() -> float | None:
    """This process's peak GPU memory so far (torch's allocator), or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def events_callback(writer: EventWriter, after_save=None):
    """A transformers TrainerCallback that mirrors logs, evals and saves into events.jsonl.

    `after_save(checkpoint_dir)` finishes a checkpoint's files before it is marked complete."""
    from transformers import TrainerCallback

    class EventsCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            writer.emit(
                "train_begin", step=state.global_step, total_steps=state.max_steps, epochs=args.num_train_epochs
            )

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            kind = "eval" if any(k.startswith("eval_") for k in logs) else "log"
            if "train_runtime" in logs:
                kind = "summary"
            logs.setdefault("epoch", state.epoch)
            peak = peak_memory_gb()
            if peak is not None:  # the monitoring table's GPU memory column (seed 000); bench/gpu.py reads it too
                logs["peak_mem_gb"] = peak
            writer.emit(kind, step=state.global_step, total_steps=state.max_steps, **logs)
            print(human_line(kind, state.global_step, state.max_steps, logs), flush=True)  # into train.log

        def on_save(self, args, state, control, **kwargs):
            # Called once the checkpoint is fully written: only now is it safe to resume from. With
            # several DDP processes rank 0 writes the model, so only its word counts.
            if state.is_world_process_zero:
                checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if after_save is not None:
                    after_save(checkpoint)
                mark_complete(checkpoint)
            writer.emit(
                "save",
                step=state.global_step,
                total_steps=state.max_steps,
                checkpoint=f"checkpoint-{state.global_step}",
            )

    return EventsCallback()


def stop_callback(requested):
    """Checkpoint and stop at the next step end once `requested()` is true (SIGTERM from `gpurun stop`)."""
    from transformers import TrainerCallback

    class StopCallback(TrainerCallback):
        stopped = False  # also true in a DDP process that stopped because another one got the signal

        def on_step_end(self, args, state, control, **kwargs):
            if _any_process(requested(), args.device):
                self.stopped = True
                control.should_save = True
                control.should_training_stop = True

    return StopCallback()


def slow_steps_callback(seconds: float):
    """Each step also sleeps `seconds` (GPURUN_TEST_STEP_SECONDS, tests only: see trainer/testpause.py)."""
    import time

    from transformers import TrainerCallback

    class SlowSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(seconds)

    return SlowSteps()


def _any_process(flag: bool, device) -> bool:
    """With several DDP processes, true if any got the signal: they must stop at the same step, or the
    ones still training would wait forever in a collective for the ones that left."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    tensor = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
