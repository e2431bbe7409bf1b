"""The loss does not depend on how a step's rows are split into micro-batches (issue 15 item 3).

Batch 8 x accumulation 1, 4 x 2 and 2 x 4 see the same 8 rows a step (one seeded shuffle); with every trained token
weighted alike, each step's loss is the same. This is what lets an out-of-memory recovery halve the batch and double
the accumulation without changing what the run means. The style of transformers' own
test_gradient_accumulation_loss_alignment_with_model_loss, on builtin:tiny and rows whose replies differ in length,
so that padding and uneven token counts per micro-batch would show.
"""

import pytest

from tests.test_recipes import events_of, train_recipe

pytestmark = pytest.mark.trains  # nine short runs: not for --fast

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


def step_losses(tmp_path, batch: int, accumulation: int, **training) -> list[float]:
    run_dir = train_recipe(
        tmp_path / f"{batch}x{accumulation}",
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
    return [e["loss"] for e in events_of(run_dir) if e["kind"] == "log" and "loss" in e]


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
