"""Out of memory in training does not end the run: it restarts from its latest checkpoint with half the per-device
batch and twice the accumulation, and ends where a run with that split from the start ends (issue 15 item 2).
On the CPU through GPURUN_TEST_OOM_TOKENS (trainer/training/oom.py): a forward over more than N tokens raises
torch.OutOfMemoryError, as CUDA would.

The demo's first eight batches of 4 rows (seed 42) hold 2584, 2546, 2602, ... tokens: with N = 2600 the third step
runs out, after the checkpoint of step 2; batches of 2 rows (~1300 tokens) never do.
"""

import json

import pytest
import yaml

from tests.conftest import run_gpurun
from tests.test_lifecycle import host_events, latest_run_id
from trainer.rundir import SPLIT_FILE

STEPS = ["--set", "training.max_steps=8", "--set", "training.save_steps=2", "--set", "training.eval_steps=100"]
NO_DROPOUT = ["--set", "lora.dropout=0"]  # other micro-batch shapes would draw other dropout masks


def split(batch: int, accumulation: int) -> list[str]:
    return [
        "--set",
        f"training.per_device_train_batch_size={batch}",
        "--set",
        f"training.gradient_accumulation_steps={accumulation}",
    ]


def oom_above(project, tokens: int | None) -> None:
    hosts = yaml.safe_load((project / "hosts.yaml").read_text())
    env = hosts["hosts"]["local"].setdefault("env", {})
    env.pop("GPURUN_TEST_OOM_TOKENS", None)
    if tokens is not None:
        env["GPURUN_TEST_OOM_TOKENS"] = str(tokens)
    (project / "hosts.yaml").write_text(yaml.safe_dump(hosts))


def train_to_the_end(project, *args: str) -> tuple[int, str, object]:
    started = run_gpurun(project, "train", "tasks/demo", *STEPS, *NO_DROPOUT, *args)
    assert started.returncode == 0, started.stderr
    follow = run_gpurun(project, "logs", "-f", timeout=900)
    run_dir = project.parent / "local-workdir" / "runs" / latest_run_id(project)  # conftest's local host
    return follow.returncode, follow.stdout, run_dir


def final_loss(run_dir) -> float:
    logged = [e for e in host_events(run_dir) if e["kind"] == "log" and "loss" in e]
    assert logged[-1]["step"] == 8, logged[-1]
    return logged[-1]["loss"]


@pytest.mark.trains
def test_a_run_out_of_memory_restarts_with_half_the_batch_and_ends_as_that_split_would(local_project):
    code, _, reference = train_to_the_end(local_project, *split(2, 2))
    assert code == 0

    oom_above(local_project, 2600)
    code, out, run_dir = train_to_the_end(local_project, *split(4, 1))
    assert code == 0, out[-3000:]
    assert "out of memory at step 3: per-device batch 4 -> 2, accumulation 1 -> 2 (effective batch 4 unchanged)" in out
    assert "split after running out of memory: per-device batch 2, accumulation 2" in out
    assert f"restarted: continuing from {run_dir.resolve()}/output/checkpoint-2" in out, out[-3000:]
    oom = [e for e in host_events(run_dir) if e["kind"] == "oom"]
    assert len(oom) == 1 and oom[0]["step"] == 3 and oom[0]["was"] == [4, 1], oom
    assert json.loads((run_dir / SPLIT_FILE).read_text())["per_device_train_batch_size"] == 2
    state = json.loads((run_dir / "output" / "trainer_state.json").read_text())
    assert state["global_step"] == 8  # the same step count: the schedule did not change
    assert final_loss(run_dir) == pytest.approx(final_loss(reference), rel=1e-4)
    status = run_gpurun(local_project, "status", run_dir.name, env={"COLUMNS": "250"})
    assert "succeeded" in status.stdout, status.stdout
    assert "(out of memory: batch 2 x accumulation 2)" in status.stdout, status.stdout  # the split that trained


@pytest.mark.trains
def test_out_of_memory_at_one_row_per_device_fails_with_advice(local_project):
    oom_above(local_project, 100)  # every batch, even of one row
    code, out, run_dir = train_to_the_end(local_project, *split(2, 1))
    assert code == 1, out[-3000:]
    assert "out of memory at step 1: per-device batch 2 -> 1, accumulation 1 -> 2" in out  # first halved, then
    assert "error: out of memory at step 1 with one row per device: nothing left to halve" in out
    assert "hint: turn on gradient checkpointing, QLoRA, or a shorter max_length" in out
    assert "Traceback" not in out
