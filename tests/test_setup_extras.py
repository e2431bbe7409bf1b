"""`gpurun setup --with NAME` and `--fast`: packages beside the training stack (a tracker for task.yaml's `report:`,
the GPU kernels), added to the Python the runs use, including on a host that already has the stack."""

import json
import site
import subprocess
import sys
import zipfile
from pathlib import Path

from launcher.hostsetup import extra_packages
from tests.conftest import run_gpurun
from trainer.host import setup as host_setup


def test_with_names_the_trackers_and_fast_adds_the_kernels_only_where_there_is_a_gpu():
    pairs, note = extra_packages(("wandb", "mlflow"), fast=True, has_gpu=True)
    modules = [pair.split(":", 1)[0] for pair in pairs]
    assert modules == ["wandb", "mlflow", "liger_kernel", "kernels"], pairs  # import names, for the host's check
    assert pairs[0].startswith("wandb:wandb>=") and note is None
    pairs, note = extra_packages((), fast=True, has_gpu=False)
    assert pairs == [] and "no NVIDIA GPU there" in note and "nothing is added" in note


def hand_made_wheel(folder: Path, name: str = "gpurun_extra_probe") -> Path:
    """A pure-Python wheel built without a build backend (none may be downloadable): what pip installs offline."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": "ANSWER = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: gpurun-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def test_the_host_half_adds_a_missing_extra_to_the_python_that_has_the_stack(tmp_path, capsys):
    # A venv that sees this Python's stack (pip included) through a .pth file, as a host's Python with the stack.
    venv = tmp_path / "host-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    ours = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    (Path(ours) / "stack.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheels = hand_made_wheel(tmp_path / "wheels").parent
    offline = ["--no-index", f"--find-links={wheels}"]
    code = host_setup._add_extras(str(python), {"gpurun_extra_probe": "gpurun_extra_probe"}, offline, tmp_path / "v")
    said = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0, said
    (installing,) = [item["installing"] for item in said if "installing" in item]  # the launcher's plan line
    assert installing["only"] == ["gpurun_extra_probe"] and installing["venv"] == str(venv), installing
    report = said[-1]["done"]
    assert report["already"] is False and report["packages"]["gpurun_extra_probe"] == "1.0", report
    answer = subprocess.run([str(python), "-c", "import gpurun_extra_probe as p; print(p.ANSWER)"], capture_output=True)
    assert answer.stdout.strip() == b"42"
    # Asked again, it is there: nothing to install.
    assert host_setup._add_extras(str(python), {"gpurun_extra_probe": "gpurun_extra_probe"}, offline, venv) == 0
    said = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [list(item) for item in said] == [["done"]] and said[0]["done"]["already"] is True, said


def test_setup_with_a_tracker_on_a_host_that_has_both_says_so_and_fast_says_why_it_adds_nothing(ssh_project):
    done = run_gpurun(ssh_project, "setup", "--host", "a100", "--with", "wandb", "--fast")
    assert done.returncode == 0, done.stderr
    assert "a100 already has the training stack" in done.stdout and "wandb " in done.stdout, done.stdout
    assert "--fast: no NVIDIA GPU there" in done.stdout, done.stdout
    unknown = run_gpurun(ssh_project, "setup", "--host", "a100", "--with", "neptune")
    assert unknown.returncode == 2 and "'neptune' is not one of" in unknown.stderr, unknown.stderr
