"""The loss does not depend on how a step's rows are split into micro-batches (issue 15 item 3).

Batch 8 x accumulation 1, 4 x 2 and 2 x 4 see the same 8 rows a step (one seeded shuffle); with every trained token
weighted alike, each step's loss is the same. This is what lets an out-of-memory recovery halve the batch and double
the accumulation without changing what the run means, and two processes (torchrun over gloo, as on two GPUs) with
half the rows each train as one process with all of them. The style of transformers' own
test_gradient_accumulation_loss_alignment_with_model_loss, on builtin:tiny and rows whose replies differ in length,
so that padding and uneven token counts per micro-batch would show.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_recipes import events_of, lay_out_run, train_recipe

pytestmark = pytest.mark.trains  # eleven short runs: not for --fast

# Replies of 1 to ~60 tokens: a micro-batch of short ones and one of long ones weigh very differently per row.
ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Say something, request {i}."},
            {"role": "assistant", "content": "ok" if i % 3 == 0 else " ".join(["word"] * (4 + 7 * (i % 8)))},
        ]
    }
    for i in range(32)
]
SPLITS = [(8, 1), (4, 2), (2, 4)]


def step_losses(tmp_path, batch: int, accumulation: int, ranks: int = 1, **training) -> list[float]:
    where = tmp_path / f"{ranks}x{batch}x{accumulation}"
    run_dir = (train_recipe if ranks == 1 else lay_out_run)(
        where,
        {"train.jsonl": ROWS},
        lora={"r": 4, "alpha": 8, "dropout": 0.0},  # dropout would draw other masks for other micro-batch shapes
        samples=0,
        training={
            "max_steps": 3,
            "per_device_train_batch_size": batch,
            "gradient_accumulation_steps": accumulation,
            "learning_rate": 1e-2,
            "warmup_steps": 0,
            "max_length": 256,  # the longest row is 188 tokens: none cut
            "save_strategy": "no",
            **training,
        },
    )
    if ranks > 1:
        run_ranks(run_dir, ranks)
    return [e["loss"] for e in events_of(run_dir) if e["kind"] == "log" and "loss" in e]


def run_ranks(run_dir: Path, ranks: int) -> None:
    """The trainer as the host runs it on several GPUs: torchrun's processes, here on the CPU over gloo."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    done = subprocess.run(
        [*torchrun, "-m", "trainer", "run", str(run_dir)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    started = next(e for e in events_of(run_dir) if e["kind"] == "start")
    assert started["processes"] == ranks, started  # one process group, not each rank training alone


def spread(runs: list[list[float]]) -> float:
    return max(abs(a - b) for losses in runs[1:] for a, b in zip(runs[0], losses, strict=True))


@pytest.mark.parametrize("training", [{}, {"padding_free": True}], ids=["padded", "padding-free"])
def test_each_steps_loss_is_the_same_however_the_batch_is_split(tmp_path, training):
    runs = [step_losses(tmp_path, b, a, **training) for b, a in SPLITS]
    assert all(len(losses) == 3 for losses in runs), runs
    assert spread(runs) < 0.01, runs


def test_a_loss_averaged_per_micro_batch_differs_so_the_test_above_can_fail(tmp_path, monkeypatch):
    # The broken variant, as transformers had it before 4.46: each micro-batch's mean loss, averaged over the
    # accumulation steps, so a row's tokens weigh more in a micro-batch of short replies than in one of long ones.
    from trainer.training import recipes

    build = recipes.build_trainer

    def per_micro_batch_mean(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.model_accepts_loss_kwargs = False
        trainer.compute_loss_func = None
        return trainer

    monkeypatch.setattr(recipes, "build_trainer", per_micro_batch_mean)
    runs = [step_losses(tmp_path, b, a) for b, a in SPLITS]
    assert spread(runs) > 0.01, runs


def test_two_ranks_give_the_loss_of_one_process_with_the_whole_batch(tmp_path):
    # 2 ranks x batch 2 x accumulation 2 is 8 rows a step, as one process's 8 x 1: the tokens are counted across
    # ranks (transformers' average_tokens_across_devices), so a rank of short replies does not weigh more.
    runs = [step_losses(tmp_path, 8, 1), step_losses(tmp_path, 2, 2, ranks=2)]
    assert all(len(losses) == 3 for losses in runs), runs
    assert spread(runs) < 0.01, runs
