"""Which Python on this host can train. Standard library only.

A host needs nothing but Python and rsync: when its `python` lacks the training stack, `gpurun setup`
makes a venv beside the pushed trainer copies (`<workdir>/venv`) and marks it ready once it is
verified. The trainer then runs in that venv: the host's `python` is only needed for the
stdlib-only commands (start, state, follow, stop).
"""

import importlib.util
import sys
from pathlib import Path

TRAINING_STACK = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")
VENV_DIR = "venv"
READY_MARKER = ".gpurun-ready"  # written last by `setup`: a half-made venv is never used


def missing_stack() -> list[str]:
    """The training packages this interpreter cannot import (found without importing them)."""
    return [name for name in TRAINING_STACK if importlib.util.find_spec(name) is None]


# The module each tracker of task.yaml's `report:` imports as (tensorboard comes with the stack).
TRACKER_MODULES = {"wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}


def missing_trackers(python: str, report: list[str]) -> list[str]:
    """The trackers `report:` names that `python` (the one the run will use) cannot import."""
    wanted = [name for name in report if name in TRACKER_MODULES]
    missing = missing_modules(python, [TRACKER_MODULES[name] for name in wanted])
    return [name for name in wanted if TRACKER_MODULES[name] in missing]


def missing_modules(python: str, modules: list[str]) -> set[str]:
    """The modules `python` cannot import, found without importing them (in this process when it is this one)."""
    if not modules:
        return set()
    if python == sys.executable:
        return {name for name in modules if importlib.util.find_spec(name) is None}
    import subprocess

    check = "import importlib.util as u, sys; print(' '.join(n for n in sys.argv[1:] if u.find_spec(n) is None))"
    found = subprocess.run([python, "-c", check, *modules], capture_output=True, text=True)
    return set(found.stdout.split()) if found.returncode == 0 else set(modules)  # a Python that fails imports none


def host_workdir() -> Path | None:
    """<workdir> when this trainer is a pushed copy (<workdir>/trainer/<version>/trainer/), else None."""
    copy = Path(__file__).resolve().parent.parent  # .../trainer/<version>/trainer (this file is in trainer/host/)
    versions = copy.parent.parent
    return versions.parent if versions.name == "trainer" else None


def setup_venv() -> Path | None:
    workdir = host_workdir()
    return workdir / VENV_DIR if workdir else None


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ready_venv_python() -> str | None:
    """The Python of the venv `gpurun setup` made, once it is marked ready."""
    venv = setup_venv()
    if venv and (venv / READY_MARKER).exists() and venv_python(venv).exists():
        return str(venv_python(venv))
    return None


def training_python() -> str | None:
    """This interpreter if it has the stack; else the venv `gpurun setup` made, if it is ready; else None."""
    return sys.executable if not missing_stack() else ready_venv_python()


def no_stack_message() -> tuple[str, str]:
    return (
        f"{sys.executable} lacks {', '.join(missing_stack())} and there is no venv made by gpurun setup",
        "run `gpurun setup --host HOST` (it makes <workdir>/venv), or set `python:` in hosts.yaml "
        "to a Python with the training stack",
    )
