"""Several GPUs: one training process per GPU (DDP), run by the wrapper. Here the processes train on
the CPU over gloo, with the fake nvidia-smi announcing two free GPUs: the same code path as CUDA. Stop and a
killed rank under two processes: tests/test_torchrun.py, which asserts what this file did and more."""

import json
from pathlib import Path

import pytest

from launcher.runs import History
from tests.conftest import run_gpurun
from tests.test_gpus_and_secrets import TWO_FREE, fake_gpus
from tests.test_lifecycle import host_events
from trainer.host.torchrun import ELASTIC_BOOTSTRAP, elastic_argv, process_count
from trainer.pushed import trainer_argv


def test_one_process_per_gpu_started_by_torchrun_with_the_same_python_and_trainer_copy():
    assert process_count(None) == process_count("") == 1
    assert process_count("0,2") == 2
    trainer = trainer_argv("/venv/bin/python", "run", "/w/runs/r1", root="/w/trainer/0.1")
    # The launcher process runs from the pushed copy too, and hands torchrun the trainer's own argv, unchanged.
    assert elastic_argv(trainer, 2) == ["/venv/bin/python", "-c", ELASTIC_BOOTSTRAP, "/w/trainer/0.1", "2", *trainer]


def test_two_gpus_train_as_two_processes_and_rank_0_speaks(ssh_project, host_workdir, tmp_path):
    fake_gpus(ssh_project, tmp_path, TWO_FREE)
    started = run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100", "--gpus", "2")
    assert started.returncode == 0, started.stderr
    assert "GPUs: 0,1" in started.stdout
    follow = run_gpurun(ssh_project, "logs", "-f")
    run_dir = host_workdir / "runs" / History(ssh_project).get(None).run_id
    assert follow.returncode == 0, follow.stdout + (run_dir / "train.rank1.log").read_text()[-3000:]
    events = host_events(run_dir)
    assert events[0]["kind"] == "start" and events[0]["processes"] == 2
    assert [e["kind"] for e in events].count("done") == 1  # rank 1 writes no events
    log = (run_dir / "train.log").read_text()
    assert log.count("[log] step 6/6 ") == 1  # and no lines in rank 0's log
    assert "[log] step 6/6 " in (run_dir / "train.rank1.log").read_text()
    assert (run_dir / "output" / "adapter_model.safetensors").exists()
    # Each step took a batch in each process: 6 steps covered twice the rows one process would have.
    training = json.loads((run_dir / "run.json").read_text())["config"]["training"]
    rows_per_step = training["per_device_train_batch_size"] * training["gradient_accumulation_steps"] * 2
    last = [e for e in events if e["kind"] == "log"][-1]
    assert last["epoch"] == pytest.approx(6 * rows_per_step / 320, abs=0.01)


def rank_pid(run_dir, rank: int) -> int:
    """The trainer process of one rank of this run (found by its environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(run_dir).encode() in cmdline and b"run" in cmdline and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} process for {run_dir}")
