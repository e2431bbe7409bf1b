"""`gpurun setup`: a host whose Python lacks the training stack gets a venv, and its runs use it."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.hostsetup import requirements_for_extra, with_torch
from launcher.runs import History
from tests.conftest import run_gpurun, write_project

BARE_PYTHON = "/usr/bin/python3"  # Debian's own Python: no torch, unlike the one the tests run on


def test_requirements_for_extra_takes_only_that_extra():
    requires = ["click>=8", 'torch>=2.4; extra == "train"', "pytest ; extra == 'dev'", 'peft;extra=="train"']
    assert requirements_for_extra(requires, "train") == ["torch>=2.4", "peft"]
    assert with_torch(["torch>=2.4", "peft"], "torch==2.13.0") == ["torch==2.13.0", "peft"]
    assert with_torch(["peft"], "torch==2.13.0") == ["peft", "torch==2.13.0"]
    assert with_torch(["torchvision", "torch>=2"], None) == ["torchvision", "torch>=2"]


@pytest.fixture
def bare_project(tmp_path, sshd, model_cache, host_workdir) -> Path:
    if not Path(BARE_PYTHON).exists():
        pytest.skip(f"no {BARE_PYTHON} on this machine")
    if subprocess.run([BARE_PYTHON, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip(f"{BARE_PYTHON} already has torch: nothing for setup to do")
    hosts = {"a100": sshd.host_entry(host_workdir, python=BARE_PYTHON, env={"GPURUN_CACHE": str(model_cache)})}
    return write_project(tmp_path / "project", hosts, default="a100", task_name="hr")


@pytest.fixture
def cleanup_venv(host_workdir):
    yield
    shutil.rmtree(host_workdir / "venv", ignore_errors=True)  # 1.7 GB: pytest keeps its tmp folders


def test_setup_makes_a_venv_that_runs_then_use(bare_project, host_workdir, cleanup_venv):
    refused = run_gpurun(bare_project, "train", "tasks/hr")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"Error: on a100: {BARE_PYTHON} lacks torch" in refused.stderr
    assert "Hint: run `gpurun setup --host a100`" in refused.stderr
    assert not (host_workdir / "runs").exists() or not any((host_workdir / "runs").iterdir())

    setup = run_gpurun(bare_project, "setup", "--torch", "torch==2.13.0", timeout=900)
    venv = host_workdir / "venv"
    if subprocess.run([BARE_PYTHON, "-c", "import ensurepip"], capture_output=True).returncode != 0:
        assert setup.returncode == 1 and "apt-get install python3-venv" in setup.stderr, setup.stderr
        return
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr
    assert f"a100 now has the training stack: runs use {venv}/bin/python" in setup.stdout
    assert "torch 2.13.0" in setup.stdout and "CUDA: not available" in setup.stdout
    assert json.loads((venv / ".gpurun-ready").read_text())["packages"]["peft"]

    again = run_gpurun(bare_project, "setup")
    assert again.returncode == 0 and "a100 already has the training stack" in again.stdout, again.stderr

    started = run_gpurun(bare_project, "train", "tasks/hr")
    assert started.returncode == 0, started.stderr
    assert run_gpurun(bare_project, "logs", "-f").returncode == 0
    run_id = History(bare_project).get(None).run_id
    events = [json.loads(line) for line in (host_workdir / "runs" / run_id / "events.jsonl").read_text().splitlines()]
    assert events[0]["kind"] == "start" and events[0]["python"] == f"{venv}/bin/python"
    assert events[-1]["kind"] == "done"


def test_a_half_made_venv_is_never_used(bare_project, host_workdir):
    # A setup cut short leaves a venv without the ready marker: runs must not pick it.
    subprocess.run([BARE_PYTHON, "-m", "venv", "--without-pip", str(host_workdir / "venv")], check=True)
    refused = run_gpurun(bare_project, "train", "tasks/hr")
    assert refused.returncode == 1 and "lacks torch" in refused.stderr, refused.stderr
