"""`gpurun setup`: give a host the training stack, in a venv under its workdir, when its Python lacks it.

The laptop probes the host once (its Python's version, its `nvidia-smi`, whether the stack is already
there), picks the torch build that host's driver can run, pushes the trainer copy and sends the
`[train]` requirements of this very gpurun; the host half (`python -m trainer setup`, stdlib only)
makes the venv, runs pip and verifies the result by importing it. Runs on that host then use the venv.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from launcher.errors import GpurunError
from launcher.hostcalls import host_error, json_object, stream_setup
from launcher.remote import Remote, ssh_failure
from launcher.sync import push_trainer
from trainer.host.interpreter import READY_MARKER, TRACKER_MODULES, TRAINING_STACK, VENV_DIR

MIN_PYTHON = (3, 10)

# The torch `gpurun setup` installs when the user names none: the version CI and scripts/setup.sh
# install, so the one every test of this gpurun ran on. `[train]` says only torch>=2.4, which would
# let pip take whatever is newest on the day; a test checks setup.sh and this constant agree.
TESTED_TORCH = "2.13.0"
TORCH_INDEX = "https://download.pytorch.org/whl"


@dataclass(frozen=True)
class TorchBuild:
    tag: str  # the index folder: https://download.pytorch.org/whl/<tag>
    label: str
    min_driver: tuple[int, ...]  # the oldest Linux driver that runs it
    download_gb: float  # torch and the libraries it pulls in, roughly (wheel sizes, x86_64)


# torch 2.13's builds: CUDA 12.6 and 13.0 are its stable CUDA builds (13.2 is experimental, so left
# out). A build runs on any driver of its CUDA major version at or above that major's minimum
# (NVIDIA's "CUDA minor version compatibility": 12.x needs >= 525.60.13, 13.x needs >= 580), so the
# newest build the driver reaches is the one to take. Sizes are approximate, from the wheels' sizes.
CUDA_BUILDS = (
    TorchBuild("cu130", "CUDA 13.0", (580,), 2.6),
    TorchBuild("cu126", "CUDA 12.6", (525, 60, 13), 2.9),
)
CPU_BUILD = TorchBuild("cpu", "CPU", (), 0.3)  # the CPU wheel alone; PyPI's plain torch pulls ~3 GB of CUDA
REST_OF_STACK_GB = 0.3  # transformers, peft, trl, datasets (pyarrow, pandas), bitsandbytes, tensorboard, ...

# pip options that replace the package index: given by the user, they choose where torch comes from.
INDEX_OPTIONS = ("--index-url", "-i", "--no-index")


@dataclass(frozen=True)
class TorchChoice:
    requirement: str  # "torch==2.13.0"
    index_args: tuple[str, ...]  # pip arguments that fetch that build; () for the user's own
    description: str  # what the user reads: "CUDA 12.6 build, for driver 550.54.15 (CUDA 12.4)"
    download_gb: float | None  # torch's share of the download; None when the user chose torch


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def choose_torch(nvidia_smi: str | None, exit_code: int = 0, host: str = "HOST") -> TorchChoice:
    """The torch build for a host, from what its `nvidia-smi` printed (None: no nvidia-smi there).

    Pure, so it is tested with made-up outputs. Raises GpurunError when there is a driver but no
    build of the tested torch runs on it, or when nvidia-smi fails (a broken driver): installing the
    CPU build there would hide the problem until a run crawls.
    """
    requirement = f"torch=={TESTED_TORCH}"
    cpu_index = ("--index-url", f"{TORCH_INDEX}/{CPU_BUILD.tag}")
    if nvidia_smi is None:
        return TorchChoice(requirement, cpu_index, f"CPU build: no nvidia-smi on {host}", CPU_BUILD.download_gb)
    if "No devices were found" in nvidia_smi:
        return TorchChoice(
            requirement, cpu_index, f"CPU build: nvidia-smi finds no GPU on {host}", CPU_BUILD.download_gb
        )
    driver = re.search(r"Driver Version:\s*([\d.]+)", nvidia_smi)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", nvidia_smi)
    cpu_hint = (
        f"gpurun setup --host {host} --torch torch=={TESTED_TORCH}+cpu --pip-arg=--extra-index-url={TORCH_INDEX}/cpu"
    )
    if exit_code != 0 or not driver:
        last = (nvidia_smi.strip().splitlines() or ["no output"])[-1].strip()
        raise GpurunError(
            f"nvidia-smi fails on {host} (exit {exit_code}): {last}",
            f"fix the NVIDIA driver there, or install the CPU build on purpose: {cpu_hint}",
        )
    found = f"driver {driver.group(1)}" + (f" (CUDA {cuda.group(1)})" if cuda else "")
    for build in CUDA_BUILDS:
        if _version(driver.group(1)) >= build.min_driver:
            description = f"{build.label} build, for {found}"
            return TorchChoice(
                requirement, ("--index-url", f"{TORCH_INDEX}/{build.tag}"), description, build.download_gb
            )
    needs = ", ".join(f"{b.label} >= {'.'.join(map(str, b.min_driver))}" for b in reversed(CUDA_BUILDS))
    raise GpurunError(
        f"the NVIDIA {found} on {host} is too old for torch {TESTED_TORCH}, the version gpurun is tested with "
        f"(its builds need: {needs})",
        f"upgrade the driver to 525.60.13 or newer; or choose a torch yourself, e.g. "
        f"gpurun setup --host {host} --torch torch==2.7.1+cu118 --pip-arg=--extra-index-url={TORCH_INDEX}/cu118 "
        f"(a version gpurun is not tested with)",
    )


def replaces_index(pip_args: tuple[str, ...] | list[str]) -> bool:
    return any(arg.split("=", 1)[0] in INDEX_OPTIONS or re.fullmatch(r"-i\S+", arg) for arg in pip_args)


@dataclass(frozen=True)
class InstallPlan:
    requirements: list[str]  # torch first
    torch_pip_args: tuple[str, ...]  # when set, the host installs torch alone with these first
    torch_text: str
    download_gb: float | None
    torch_given: bool

    def summary(self, host: str, venv: str, free_bytes: int | None = None) -> str:
        """One line, printed before pip starts: what goes where and roughly what it costs."""
        rest = [_name(r) for r in self.requirements if _name(r) != "torch"]
        if self.torch_given:
            cost = f"about {REST_OF_STACK_GB:.1f} GB to download besides torch"
        else:
            cost = f"about {self.download_gb + REST_OF_STACK_GB:.1f} GB to download"
        free = f", {free_bytes / 1e9:.0f} GB free there" if free_bytes is not None else ""
        return f"setup {host}: {self.torch_text} + {', '.join(rest)} into {venv}; {cost} (approximate{free})"


def install_plan(requirements: list[str], torch_spec: str | None, pip_args, choice: TorchChoice | None) -> InstallPlan:
    """What to ask the host for. A --torch given is used as given, with no index of ours; so is an
    index the user passes with --pip-arg (their mirror), though the line still says what we would take."""
    if torch_spec or choice is None:
        reqs = with_torch(requirements, torch_spec)
        torch = next((r for r in reqs if _name(r) == "torch"), "torch")
        return InstallPlan(_torch_first(reqs), (), f"{torch} (as given)", None, True)
    reqs = _torch_first(with_torch(requirements, choice.requirement))
    version = choice.requirement.partition("==")[2]
    if replaces_index(pip_args):
        text = f"torch {version} from the index you gave (gpurun would take the {choice.description})"
        return InstallPlan(reqs, (), text, choice.download_gb, False)
    return InstallPlan(reqs, choice.index_args, f"torch {version} ({choice.description})", choice.download_gb, False)


def _torch_first(requirements: list[str]) -> list[str]:
    return sorted(requirements, key=lambda r: _name(r) != "torch")


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


def train_requirements(extra: str = "train") -> list[str]:
    try:
        requires = metadata.requires("gpurun") or []
    except metadata.PackageNotFoundError:
        raise GpurunError(
            f"gpurun's package metadata is missing, so its [{extra}] requirements are unknown",
            "install gpurun with pip (pip install -e .) and run setup again",
        ) from None
    return requirements_for_extra(requires, extra)


# The module each extra package imports as: `setup --with NAME` (a tracker task.yaml's `report:` names), `--fast`.
MODULES = {**TRACKER_MODULES, "liger-kernel": "liger_kernel"}


def extra_packages(with_: tuple[str, ...], fast: bool, has_gpu: bool) -> tuple[list[str], str | None]:
    """The `--extra MODULE:REQUIREMENT` pairs the host half gets, and a line to say when --fast adds nothing."""
    requirements = [r for name in with_ for r in train_requirements(name)]
    note = None
    if fast and has_gpu:
        requirements += train_requirements("fast")
    elif fast:
        note = "--fast: no NVIDIA GPU there; Liger's and FlashAttention's kernels run only on one, so nothing is added"
    return [f"{MODULES.get(_name(r), _name(r))}:{r}" for r in requirements], note


# Run by the host's `python` as `-c PROBE READY_MARKER_PATH smi|- STACK...`: its version first, on a line
# of its own (so a Python too old for the rest still says what it is), then what setup needs, as JSON.
PROBE = r"""
import sys
print("%d.%d" % sys.version_info[:2]); sys.stdout.flush()
import importlib.util, json, os, subprocess
marker, smi, stack = sys.argv[1], sys.argv[2], sys.argv[3:]
found = {"stack": all(importlib.util.find_spec(n) for n in stack), "nvidia_smi": None}
found["venv_ready"] = os.path.exists(os.path.expanduser(marker))
if smi == "smi":
    try:
        p = subprocess.run(["nvidia-smi"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        found["nvidia_smi"], found["nvidia_smi_exit"] = p.stdout.decode("utf-8", "replace"), p.returncode
    except OSError:
        pass
    except subprocess.TimeoutExpired:
        found["nvidia_smi"], found["nvidia_smi_exit"] = "nvidia-smi did not answer within 30 s", -1
print(json.dumps(found))
"""


@dataclass(frozen=True)
class HostProbe:
    python_version: str
    has_stack: bool
    venv_ready: bool
    nvidia_smi: str | None
    nvidia_smi_exit: int


def probe_host(remote: Remote, read_gpu: bool) -> HostProbe:
    """One round trip: the host Python's version (or a clear error when it is missing or too old),
    whether it or a ready venv already has the stack, and what `nvidia-smi` says there."""
    host = remote.host
    # The host's `env:` applies, as for every trainer command: a PATH with its nvidia-smi, say.
    env = [f"{k}={v}" for k, v in host.env.items()]
    marker = remote.path(VENV_DIR, READY_MARKER)
    python = remote.host_python()  # a `~/...` python as the host runs it, like every trainer command
    argv = ["env", *env, python, "-c", PROBE, marker, "smi" if read_gpu else "-", *TRAINING_STACK]
    proc = remote.run(argv, check=False)
    lines = proc.stdout.strip().splitlines()
    version = lines[0].strip() if lines else ""
    if not re.fullmatch(r"\d+\.\d+", version):
        raise GpurunError(
            f"`{host.python}` does not run on {host.name} (exit {proc.returncode})",
            f"set `python:` of {host.name} in hosts.yaml to a Python 3.10 or newer",
        )
    if tuple(int(p) for p in version.split(".")) < MIN_PYTHON:
        raise GpurunError(
            f"{host.python} on {host.name} is Python {version}; gpurun needs 3.10 or newer",
            f"set `python:` of {host.name} in hosts.yaml to a newer Python",
        )
    found = json_object(lines[-1]) if lines else None
    if found is None:
        tail = " / ".join(proc.stderr.strip().splitlines()[-3:])
        raise GpurunError(f"probing {host.python} on {host.name} failed (exit {proc.returncode})", tail) from None
    return HostProbe(version, found["stack"], found["venv_ready"], found["nvidia_smi"], found.get("nvidia_smi_exit", 0))


def setup_host(
    remote: Remote,
    torch_spec: str | None,
    pip_args: tuple[str, ...],
    force: bool,
    on_log: Callable[[str], None],
    on_plan: Callable[[str], None] = lambda line: None,
    with_: tuple[str, ...] = (),
    fast: bool = False,
) -> dict:
    """Make the host ready to train; returns the host's report (python, package versions, CUDA, GPUs).

    `on_plan` gets one line saying what will be installed and roughly how much it downloads, once the
    host has said it is about to install (not when it already has the stack).
    """
    host = remote.host
    probe = probe_host(remote, read_gpu=torch_spec is None or fast)
    has_gpu = probe.nvidia_smi_exit == 0 and "Driver Version" in (probe.nvidia_smi or "")  # as choose_torch reads it
    extras, note = extra_packages(with_, fast, has_gpu)
    if note:
        on_plan(note)
    installs = force or not (probe.has_stack or probe.venv_ready)
    choice = None
    if installs and not torch_spec:
        choice = choose_torch(probe.nvidia_smi, probe.nvidia_smi_exit, host.name)
    plan = install_plan(train_requirements(), torch_spec, pip_args, choice)
    trainer_root = push_trainer(remote)
    args = ["--force"] if force else []
    for arg in pip_args:
        args += ["--pip-arg", arg]
    for arg in plan.torch_pip_args:
        args += ["--torch-pip-arg", arg]
    for pair in extras:
        args += ["--extra", pair]

    def on_item(item: dict) -> bool:
        """True for the reply; progress goes to the callbacks."""
        if "log" in item:
            on_log(item["log"])
        elif "installing" in item:
            what = item["installing"]
            if what.get("only"):  # the stack is there: only the --with/--fast packages it lacks
                on_plan(f"setup {host.name}: {', '.join(what['only'])} into {what['venv']}, which runs use there")
            else:
                on_plan(plan.summary(host.name, what["venv"], what.get("free_bytes")))
        else:
            return "alive" not in item  # heartbeats only prove the laptop is still there
        return False

    reply, code, stderr = stream_setup(remote, trainer_root, [*args, "--", *plan.requirements], on_item, on_log)
    if reply is None:
        if code == 255:
            raise ssh_failure(host, stderr)
        tail = " / ".join(stderr.strip().splitlines()[-3:])
        raise GpurunError(f"setup on {host.name} ended without a result (exit {code})", tail)
    if "error" in reply:
        raise host_error(host.name, reply)
    return reply["done"]
