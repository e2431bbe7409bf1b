"""`gpurun setup`: give a host the training stack, in a venv under its workdir, when its Python lacks it.

The laptop checks the host's Python version, pushes the trainer copy and sends the `[train]`
requirements of this very gpurun; the host half (`python -m trainer setup`, stdlib only) makes the
venv, runs pip and verifies the result by importing it. Runs on that host then use the venv.
"""

import json
import re
from collections.abc import Callable
from importlib import metadata

from launcher.errors import GpurunError, host_error
from launcher.remote import Remote, ssh_failure
from launcher.sync import push_trainer

MIN_PYTHON = (3, 10)
VERSION_PROBE = "import sys; print('%d.%d' % sys.version_info[:2])"


def requirements_for_extra(requires: list[str], extra: str) -> list[str]:
    """The requirements a distribution lists under `extra` (metadata lines like 'torch>=2.4; extra == "train"')."""
    wanted = []
    for line in requires:
        spec, _, marker = line.partition(";")
        if re.search(rf"""extra\s*==\s*['"]{re.escape(extra)}['"]""", marker):
            wanted.append(spec.strip())
    return wanted


def with_torch(requirements: list[str], torch_spec: str | None) -> list[str]:
    """Swap the torch requirement for the user's (a CPU pin, a CUDA-specific version)."""
    if not torch_spec:
        return requirements
    return [torch_spec if _name(r) == "torch" else r for r in requirements] + (
        [] if any(_name(r) == "torch" for r in requirements) else [torch_spec]
    )


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    return match.group(0).lower() if match else ""


def train_requirements(torch_spec: str | None = None) -> list[str]:
    try:
        requires = metadata.requires("gpurun") or []
    except metadata.PackageNotFoundError:
        raise GpurunError(
            "gpurun's package metadata is missing, so its [train] requirements are unknown",
            "install gpurun with pip (pip install -e .) and run setup again",
        ) from None
    return with_torch(requirements_for_extra(requires, "train"), torch_spec)


def check_python(remote: Remote) -> str:
    """The host Python's version, or a clear error when it is missing or too old."""
    host = remote.host
    proc = remote.run([host.python, "-c", VERSION_PROBE], check=False)
    version = proc.stdout.strip()
    if proc.returncode != 0 or not re.fullmatch(r"\d+\.\d+", version):
        raise GpurunError(
            f"`{host.python}` does not run on {host.name} (exit {proc.returncode})",
            f"set `python:` of {host.name} in hosts.yaml to a Python 3.10 or newer",
        )
    if tuple(int(p) for p in version.split(".")) < MIN_PYTHON:
        raise GpurunError(
            f"{host.python} on {host.name} is Python {version}; gpurun needs 3.10 or newer",
            f"set `python:` of {host.name} in hosts.yaml to a newer Python",
        )
    return version


def setup_host(
    remote: Remote, torch_spec: str | None, pip_args: tuple[str, ...], force: bool, on_log: Callable[[str], None]
) -> dict:
    """Make the host ready to train; returns the host's report (python, package versions, CUDA, GPUs)."""
    check_python(remote)
    requirements = train_requirements(torch_spec)
    trainer_root = push_trainer(remote)
    args = ["setup", *(["--force"] if force else [])]
    for arg in pip_args:
        args += ["--pip-arg", arg]
    proc = remote.stream(remote.python_argv(trainer_root, *args, "--", *requirements))
    reply: dict | None = None
    for line in proc.stdout:
        try:
            item = json.loads(line)
        except ValueError:
            on_log(line.rstrip())
            continue
        if "log" in item:
            on_log(item["log"])
        else:
            reply = item
    stderr = proc.stderr.read() if proc.stderr else ""
    code = proc.wait()
    if reply is None:
        if code == 255:
            raise ssh_failure(remote.host, stderr)
        tail = " / ".join(stderr.strip().splitlines()[-3:])
        raise GpurunError(f"setup on {remote.host.name} ended without a result (exit {code})", tail)
    if "error" in reply:
        raise host_error(remote.host.name, reply)
    return reply["done"]
