"""bench/gpu.py cannot run here (no GPU): it must start, find none, and say so in one line, before any download."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_bench(tmp_path: Path, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py")], capture_output=True, text=True, env=env, timeout=300
    )


def test_without_nvidia_smi_the_gpu_bench_says_there_is_no_gpu_and_exits_2(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_bench(tmp_path, str(empty))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "bench/gpu.py: no NVIDIA GPU here: nvidia-smi is not installed. Nothing was run; "
        "run it on a host with NVIDIA GPUs."
    )
    # The plan it would run: 2 models x LoRA/QLoRA x one and all GPUs x 3 engines.
    plan = result.stdout.splitlines()
    assert plan[0] == "plan: 24 runs of 30 steps, 8 rows of up to 512 tokens per GPU", plan
    rows = [line.split() for line in plan[2:]]
    assert len(rows) == 24 and {r[3] for r in rows} == {"trl", "trl-tuned", "gpurun"}
    assert {r[0] for r in rows} == {"Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen3-4B"}
    assert {r[1] for r in rows} == {"lora", "qlora"} and {r[2] for r in rows} == {"1", "all"}


def test_the_dry_run_prints_the_plan_and_exits_2_anywhere(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    argv = [sys.executable, str(REPO / "bench" / "gpu.py"), "--dry-run", "--models", "m", "--adapters", "qlora"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "a dry run. Nothing was run" in result.stderr, result.stderr
    assert result.stdout.splitlines()[0] == "plan: 6 runs of 30 steps, 8 rows of up to 512 tokens per GPU"


def test_a_driver_with_a_cpu_build_of_torch_is_named_as_such(tmp_path):
    """nvidia-smi lists GPUs but torch is the CPU build (a common mistake): the line says which and what to do."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1)'\necho 'GPU 1: NVIDIA A100 (UUID: GPU-2)'\n"
    )
    smi.chmod(0o755)
    result = run_bench(tmp_path, f"{bin_dir}:/usr/bin:/bin")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "nvidia-smi lists 2 GPU(s) but this Python's torch" in lines[0]
    assert "sees none (a CPU build?)" in lines[0]


def test_log_events_carry_peak_gpu_memory_on_cuda_and_nothing_on_the_cpu(monkeypatch):
    import torch

    from trainer.training.callbacks import peak_memory_gb

    assert peak_memory_gb() is None  # this machine: CPU only
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 3 * 2**30 + 2**28)
    assert peak_memory_gb() == 3.25
