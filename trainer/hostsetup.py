"""`python -m trainer setup [--force] [--pip-arg ARG]... -- REQUIREMENT...`: the host half of `gpurun setup`.

Standard library only (it runs where the training stack is missing). Makes `<workdir>/venv`, installs
the requirements the launcher sends, checks the result by importing it, and only then writes the
ready marker, so a setup cut short is resumed by running it again and is never used half-made.
Every line it prints is JSON: {"log": ...} while working, then {"done": report} or {"error", "hint"}.
"""

import json
import subprocess
import sys
from pathlib import Path

from trainer.hostside import _reply, _write_atomic
from trainer.interpreter import READY_MARKER, missing_stack, ready_venv_python, setup_venv, venv_python

# Run by the venv's Python: what the user needs to know about the stack, and whether CUDA works.
PROBE = """
import json, sys
from importlib.metadata import version, PackageNotFoundError
report = {"python": sys.executable, "python_version": "%d.%d.%d" % sys.version_info[:3], "packages": {}}
for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes"):
    try:
        report["packages"][name] = version(name)
    except PackageNotFoundError:
        report["packages"][name] = None
import torch, transformers, peft, trl, datasets, accelerate
report["cuda"] = torch.cuda.is_available()
report["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(json.dumps(report))
"""


def main(args: list[str]) -> int:
    force = "--force" in args
    pip_args, requirements = _parse(args)
    venv = setup_venv()
    if venv is None:
        return _fail("setup runs from a trainer copy pushed by gpurun", "run it as: gpurun setup --host HOST")
    if not force:
        if not missing_stack():
            return _done(sys.executable, already=True)
        if ready := ready_venv_python():
            return _done(ready, already=True)
    (venv / READY_MARKER).unlink(missing_ok=True)
    python = venv_python(venv)
    if not python.exists():
        _log(f"creating {venv} with {sys.executable}")
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            output = (made.stdout + made.stderr).strip()
            if "ensurepip" in output:
                return _fail(
                    f"{sys.executable} cannot make a venv: its ensurepip is missing",
                    "install it on the host (Debian/Ubuntu: apt-get install python3-venv), "
                    "or set `python:` in hosts.yaml to another Python",
                )
            return _fail(f"`{sys.executable} -m venv {venv}` failed: {output.splitlines()[-1] if output else ''}")
    _log(f"installing into {venv}: {' '.join(requirements)}")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *pip_args, *requirements]
    with subprocess.Popen(
        pip, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    ) as proc:
        for line in proc.stdout:
            _log(line.rstrip())
    if proc.returncode != 0:
        return _fail(
            f"pip install failed (exit {proc.returncode})",
            "the lines above say why; fix it and run gpurun setup again (it carries on where it stopped)",
        )
    return _done(str(python), already=False, mark=venv / READY_MARKER)


def _parse(args: list[str]) -> tuple[list[str], list[str]]:
    pip_args, requirements, i = [], [], 0
    while i < len(args):
        if args[i] == "--":
            requirements = args[i + 1 :]
            break
        if args[i] == "--pip-arg" and i + 1 < len(args):
            pip_args.append(args[i + 1])
            i += 1
        i += 1
    return pip_args, requirements


def _done(python: str, already: bool, mark: Path | None = None) -> int:
    probe = subprocess.run([python, "-c", PROBE], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return _fail(f"the training stack in {python} does not import: {last}", "run gpurun setup --force")
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    report["already"] = already
    if mark is not None:
        _write_atomic(mark, json.dumps(report, indent=2))  # last step: from now on, runs use this venv
    _reply({"done": report})
    return 0


def _log(line: str) -> None:
    _reply({"log": line})


def _fail(message: str, hint: str = "") -> int:
    _reply({"error": message, "hint": hint})
    return 1
