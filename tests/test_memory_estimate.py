"""The memory pre-flight's formula (trainer/training/memory.py) against PyTorch's profiler on real CPU training steps
(tests/memory_probe.py), within 20%: builtin:tiny's shape and larger random-init models, LoRA and full fine-tunes,
with and without gradient checkpointing (issue 15 item 1). And the advice it gives when a run cannot fit."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from trainer.training.memory import GB, ModelShape, Setup, advice, estimate

TINY = {"hidden": 128, "layers": 4, "heads": 4, "kv_heads": 2, "intermediate": 384}  # builtin:tiny v7
H256 = {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2, "intermediate": 768}
H384 = {"hidden": 384, "layers": 6, "heads": 6, "kv_heads": 2, "intermediate": 1024}
H512 = {"hidden": 512, "layers": 8, "heads": 8, "kv_heads": 4, "intermediate": 1536}
CASES = [
    {**TINY, "tokens": 768, "batch": 2, "lora": True, "checkpointing": False},
    {**H256, "tokens": 2048, "batch": 1, "lora": True, "checkpointing": True},
    {**H384, "tokens": 1024, "batch": 1, "lora": False, "checkpointing": True},
    {**H512, "tokens": 512, "batch": 2, "lora": False, "checkpointing": False},
    {**H512, "tokens": 1024, "batch": 1, "lora": True, "checkpointing": False},
]


def case_name(case: dict) -> str:
    kind = ("lora" if case["lora"] else "full") + ("-ckpt" if case["checkpointing"] else "")
    return f"h{case['hidden']}-{case['tokens']}x{case['batch']}-{kind}"


def measure(case: dict) -> dict:
    probe = subprocess.run(
        [sys.executable, "-m", "tests.memory_probe", json.dumps(case)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    return json.loads(probe.stdout.strip().splitlines()[-1])


@pytest.mark.trains
@pytest.mark.parametrize("case", CASES, ids=case_name)
def test_the_estimate_is_within_20_percent_of_the_profilers_peak(case):
    measured = measure(case)
    shape = ModelShape.from_config(measured["config"])
    setup = Setup(
        batch=case["batch"],
        tokens=case["tokens"],
        lora_r=16 if case["lora"] else None,
        checkpointing=case["checkpointing"],
    )
    guess = estimate(shape, setup)
    assert guess.total == pytest.approx(measured["peak"], rel=0.2), (guess.line(), measured["peak"] / 2**20)


QWEN_7B = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}


def test_qwen_7b_counts_its_own_parameters():
    assert ModelShape.from_config(QWEN_7B).params() == pytest.approx(7.62e9, rel=0.01)  # its model card: 7.61B


def test_a_run_that_cannot_fit_gets_changes_that_keep_the_effective_batch_each_with_its_estimate():
    shape = ModelShape.from_config(QWEN_7B)
    setup = Setup(batch=8, tokens=2048, dtype_bytes=2, cuda=True)
    free = 23.6 * GB
    assert estimate(shape, setup).total > free
    said = advice(shape, setup, accumulation=2, free=free)
    batch = said[0]
    assert batch.startswith("--set training.per_device_train_batch_size=")
    per_device = int(batch.split("=")[1].split()[0])
    accumulation = int(batch.split("gradient_accumulation_steps=")[1].split()[0])
    assert per_device * accumulation == 8 * 2  # the effective batch is kept
    assert any("gradient_checkpointing=true" in line for line in said)
    assert any("load_in_4bit=true" in line for line in said)
    for line in said:  # each with the formula's own figure
        figure = float(line.split("→ ")[1].split()[0])
        assert figure > 0
    checkpointed = estimate(shape, Setup(batch=8, tokens=2048, dtype_bytes=2, cuda=True, checkpointing=True))
    assert checkpointed.total < estimate(shape, setup).total / 3


def test_the_breakdown_sums_to_its_total_and_says_the_free_memory():
    guess = estimate(ModelShape.from_config(QWEN_7B), Setup(batch=1, tokens=1024, dtype_bytes=2, cuda=True))
    line = guess.line(23.6 * GB, "GPU 0")
    assert line.startswith("weights 14.2 GB · ") and line.endswith("of 23.6 GB free on GPU 0"), line
    assert "context 0.6 GB" in line


def test_validate_estimates_for_a_gpu_and_refuses_one_too_small_with_the_changes_that_fit(local_project):
    from tests.conftest import run_gpurun

    fits = run_gpurun(local_project, "validate", "tasks/demo", "--gpu-memory", "24GB")
    assert fits.returncode == 0, fits.stderr
    assert "memory: weights " in fits.stdout and "of 24.0 GB free (estimate)" in fits.stdout, fits.stdout
    cpu = run_gpurun(local_project, "validate", "tasks/demo", "--device", "cpu")
    assert "per process, on the CPU (estimate)" in cpu.stdout, cpu.stdout

    four = ("--set", "training.per_device_train_batch_size=4")  # the demo's own batch (conftest's tasks train 1)
    small = run_gpurun(local_project, "validate", "tasks/demo", *four, "--gpu-memory", "0.3GB")
    assert small.returncode == 1
    said = small.stderr
    assert "Error: memory: the run needs about 0.8 GB a GPU and 0.3 GB are free" in said, said
    # One row a step with 4x the accumulation: the same effective batch.
    batch = "--set training.per_device_train_batch_size=1 --set training.gradient_accumulation_steps=4 → "
    assert batch in said and "start anyway with gpurun train --force" in said, said
    assert "Traceback" not in said

    wrong = run_gpurun(local_project, "validate", "tasks/demo", "--gpu-memory", "lots")
    assert wrong.returncode == 1 and "--gpu-memory: 'lots' is not a size" in wrong.stderr, wrong.stderr
