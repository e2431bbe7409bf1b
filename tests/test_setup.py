"""`gpurun setup`: a host whose Python lacks the training stack gets a venv, and its runs use it.

The whole setup, from a refused train to a run in the venv, is tested on the README's own host
entry (a box account, a `~` workdir, Debian's python3): tests/test_readme_host.py."""

import subprocess
from pathlib import Path

import pytest

from launcher.hostsetup import requirements_for_extra, with_torch
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


def test_a_half_made_venv_is_never_used(bare_project, host_workdir):
    # A setup cut short leaves a venv without the ready marker: runs must not pick it.
    subprocess.run([BARE_PYTHON, "-m", "venv", "--without-pip", str(host_workdir / "venv")], check=True)
    refused = run_gpurun(bare_project, "train", "tasks/hr")
    assert refused.returncode == 1 and "lacks torch" in refused.stderr, refused.stderr
