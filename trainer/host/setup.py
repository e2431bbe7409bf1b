"""`python -m trainer setup [--force] [--pip-arg ARG]... [--torch-pip-arg ARG]... [--extra MODULE:REQ]... -- REQ...`.

The host half of `gpurun setup`. Standard library only (it runs where the training stack is missing).
Makes `<workdir>/venv`, installs the requirements the launcher sends (torch alone first, from the
index `--torch-pip-arg` names, when there is one), checks the result by importing it, and only then
writes the ready marker, so a setup cut short is resumed by running it again and is never used half-made.
`--extra` packages (a tracker, the GPU kernels: `gpurun setup --with/--fast`) join a new venv's requirements, or are
added to the Python the runs already use when they do not import there.
Every line it prints is JSON: {"installing": {"venv", "free_bytes"}} just before pip starts, {"log": ...}
and {"alive": 1} while working, then {"done": report} or {"error", "hint"}.

When the laptop goes (Ctrl-C there, a dropped connection), sshd closes this process's stdout; the next
write fails, and pip's whole process group is stopped with it: no pip is left running on the box.
"""

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainer.host.files import reply, write_atomic
from trainer.host.interpreter import (
    READY_MARKER,
    missing_modules,
    missing_stack,
    ready_venv_python,
    setup_venv,
    venv_python,
)

# Run by the venv's Python: what the user needs to know about the stack, and whether CUDA works.
PROBE = """
import json, sys
from importlib.metadata import version, PackageNotFoundError
report = {"python": sys.executable, "python_version": "%d.%d.%d" % sys.version_info[:3], "packages": {}}
for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", *sys.argv[1:]):
    try:
        report["packages"][name] = version(name)
    except PackageNotFoundError:
        report["packages"][name] = None
import torch, transformers, peft, trl, datasets, accelerate
report["cuda"] = torch.cuda.is_available()
report["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(json.dumps(report))
"""


LAPTOP_GONE = 130
HEARTBEAT_S = 1.0  # how soon a closed connection is noticed while pip is quiet (a hung download, say)
PIP_STOP_GRACE_S = 5.0


class _Stop(Exception):
    """A signal asked this process to end: Ctrl-C on the local host, the launcher's terminate(), SIGHUP."""


_pip: subprocess.Popen | None = None  # the pip running now, for whoever has to stop it
_stopping = False


def _on_signal(signum, frame):
    # Only a flag, checked between steps and several times a second while pip runs: an exception
    # raised wherever the signal lands (inside a lock of queue.get, say) could escape as another
    # error, or hit the cleanup itself, and leave pip running.
    global _stopping
    _stopping = True


def _check_stop() -> None:
    if _stopping:
        raise _Stop()


def main(args: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        return _setup(args)
    except (BrokenPipeError, ConnectionResetError, _Stop):
        pass  # the laptop is gone (a write failed), or a signal came
    if _pip is not None:
        _stop_group(_pip)
    _quiet_stdout()  # no traceback, no error for no one
    return LAPTOP_GONE


def _setup(args: list[str]) -> int:
    force = "--force" in args
    pip_args, torch_pip_args, extras, requirements = _parse(args)
    venv = setup_venv()
    if venv is None:
        return _fail("setup runs from a trainer copy pushed by gpurun", "run it as: gpurun setup --host HOST")
    if not force:
        python = sys.executable if not missing_stack() else ready_venv_python()
        if python:
            return _add_extras(python, extras, pip_args, venv)
    (venv / READY_MARKER).unlink(missing_ok=True)
    requirements = [*requirements, *extras.values()]
    python = venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    reply({"installing": {"venv": str(venv), "free_bytes": shutil.disk_usage(venv.parent).free}})
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
    for pip in pip_steps(str(python), pip_args, torch_pip_args, requirements):
        _check_stop()
        _log(f"installing into {venv}: {' '.join(pip[pip.index('install') + 1 :])}")
        code = _run_pip(pip)
        if code != 0:
            return _fail(
                f"pip install failed (exit {code})",
                "the lines above say why; fix it and run gpurun setup again (it carries on where it stopped)",
            )
    return _done(str(python), already=False, mark=venv / READY_MARKER, extras=extras)


def _add_extras(python: str, extras: dict[str, str], pip_args: list[str], venv: Path) -> int:
    """The stack is there: pip adds only the extra packages that do not import in the Python the runs use."""
    absent = missing_modules(python, list(extras))
    missing = [requirement for module, requirement in extras.items() if module in absent]
    if not missing:
        return _done(python, already=True, extras=extras)
    where = str(Path(python).parent.parent)
    reply({"installing": {"venv": where, "free_bytes": shutil.disk_usage(python).free, "only": missing}})
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", *pip_args, *missing]
    _log(f"installing into {python}: {' '.join(missing)}")
    code = _run_pip(pip)
    if code != 0:
        return _fail(f"pip install {' '.join(missing)} failed (exit {code})", "the lines above say why")
    ours = Path(python) == venv_python(venv)  # the marker holds the report: rewritten with the new packages
    return _done(python, already=False, mark=venv / READY_MARKER if ours else None, extras=extras)


def pip_steps(python: str, pip_args: list[str], torch_pip_args: list[str], requirements: list[str]) -> list[list[str]]:
    """The pip commands to run. With an index for torch, torch goes alone first, from that index only
    (PyTorch's own way: `--index-url .../cu126`), so the rest, from the usual index, finds it satisfied;
    the user's pip arguments come last in each, so theirs win."""
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    torch = [r for r in requirements if re.match(r"torch\b(?![-_.])", r, re.IGNORECASE)]
    steps = [[*pip, *torch_pip_args, *pip_args, *torch]] if torch_pip_args and torch else []
    return [*steps, [*pip, *pip_args, *requirements]]


def _run_pip(argv: list[str]) -> int:
    """Run pip in its own process group, relaying its lines and a heartbeat; returns pip's exit code.
    A failed write (the laptop is gone) or a signal raises, and main() stops pip's group."""
    global _pip
    lines: queue.Queue = queue.Queue()

    def relay() -> None:  # a thread, so the main one can write a heartbeat while pip is quiet
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    # Its own process group: one killpg reaches pip and anything it started (a build backend, say).
    _pip = proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        encoding="utf-8", errors="replace", start_new_session=True,
    )  # fmt: skip
    threading.Thread(target=relay, daemon=True).start()
    said = time.monotonic()
    while True:
        _check_stop()
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if time.monotonic() - said >= HEARTBEAT_S:
                reply({"alive": 1})  # nothing to say, but it fails at once once no one listens
                said = time.monotonic()
            continue
        if line is None:
            code = proc.wait()
            _pip = None
            return code
        _log(line.rstrip())
        said = time.monotonic()


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, PIP_STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _quiet_stdout() -> None:
    """The laptop is gone: later writes (and the flush at exit) go nowhere instead of raising."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _parse(args: list[str]) -> tuple[list[str], list[str], dict[str, str], list[str]]:
    """(pip args, torch's pip args, {module: requirement} of the extras, requirements)."""
    pip_args, torch_pip_args, extras, requirements, i = [], [], {}, [], 0
    while i < len(args):
        if args[i] == "--":
            requirements = args[i + 1 :]
            break
        if args[i] in ("--pip-arg", "--torch-pip-arg") and i + 1 < len(args):
            (pip_args if args[i] == "--pip-arg" else torch_pip_args).append(args[i + 1])
            i += 1
        elif args[i] == "--extra" and i + 1 < len(args):
            module, _, requirement = args[i + 1].partition(":")
            extras[module] = requirement
            i += 1
        i += 1
    return pip_args, torch_pip_args, extras, requirements


def _done(python: str, already: bool, mark: Path | None = None, extras: dict[str, str] | None = None) -> int:
    names = [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in (extras or {}).values()]  # distributions: versions
    probe = subprocess.run([python, "-c", PROBE, *names], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return _fail(f"the training stack in {python} does not import: {last}", "run gpurun setup --force")
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    report["already"] = already
    if mark is not None:
        _check_stop()  # interrupted while verifying: the venv is left unmarked, like any cut-short setup
        write_atomic(mark, json.dumps(report, indent=2))  # last step: from now on, runs use this venv
    reply({"done": report})
    return 0


def _log(line: str) -> None:
    reply({"log": line})


def _fail(message: str, hint: str = "") -> int:
    reply({"error": message, "hint": hint})
    return 1
