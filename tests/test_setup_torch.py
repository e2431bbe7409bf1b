"""`gpurun setup` picks the torch build the host's driver runs, says what it costs, and Ctrl-C stops pip on the box."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from launcher.errors import GpurunError
from launcher.hostsetup import (
    TESTED_TORCH,
    choose_torch,
    install_plan,
    replaces_index,
)
from tests.conftest import REPO, gpurun_argv, run_gpurun, write_project
from tests.test_lifecycle import wait_for
from trainer.host.setup import pip_steps

BARE_PYTHON = "/usr/bin/python3"  # Debian's own Python: no torch, so setup has work to do


def smi_header(driver: str, cuda: str) -> str:
    """The top of a real `nvidia-smi` table, with one GPU."""
    return f"""Mon Nov 30 02:21:31 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI {driver:<18} Driver Version: {driver:<14} CUDA Version: {cuda:<8}|
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA A100-SXM4-80GB          On  |   00000000:07:00.0 Off |                    0 |
+-----------------------------------------------------------------------------------------+
"""


PYTORCH = "https://download.pytorch.org/whl"


def test_a_box_without_nvidia_smi_gets_the_cpu_wheel_of_the_tested_torch():
    choice = choose_torch(None, host="a100")
    assert choice.requirement == f"torch=={TESTED_TORCH}"
    assert choice.index_args == ("--index-url", f"{PYTORCH}/cpu")
    assert choice.description == "CPU build: no nvidia-smi on a100"
    assert choice.download_gb < 0.5  # not the ~3 GB of nvidia wheels PyPI's plain torch pulls


def test_nvidia_smi_without_a_gpu_gets_the_cpu_wheel():
    choice = choose_torch("No devices were found\n", exit_code=6, host="a100")
    assert choice.index_args == ("--index-url", f"{PYTORCH}/cpu")
    assert choice.description == "CPU build: nvidia-smi finds no GPU on a100"


@pytest.mark.parametrize(
    ("driver", "cuda", "tag", "label"),
    [
        ("550.54.15", "12.4", "cu126", "CUDA 12.6"),  # 12.6 runs on any 12.x driver >= 525.60.13
        ("525.60.13", "12.0", "cu126", "CUDA 12.6"),  # the oldest driver that does
        ("570.124.06", "12.8", "cu126", "CUDA 12.6"),
        ("580.65.06", "13.0", "cu130", "CUDA 13.0"),
        ("590.48.01", "13.1", "cu130", "CUDA 13.0"),
    ],
)
def test_a_driver_gets_the_newest_torch_build_it_can_run(driver, cuda, tag, label):
    choice = choose_torch(smi_header(driver, cuda), host="a100")
    assert choice.requirement == f"torch=={TESTED_TORCH}"
    assert choice.index_args == ("--index-url", f"{PYTORCH}/{tag}")
    assert choice.description == f"{label} build, for driver {driver} (CUDA {cuda})"


@pytest.mark.parametrize(("driver", "cuda"), [("520.61.05", "11.8"), ("470.256.02", "11.4"), ("525.60.11", "12.0")])
def test_a_driver_too_old_for_every_build_of_the_tested_torch_is_refused_with_a_way_out(driver, cuda):
    with pytest.raises(GpurunError) as refused:
        choose_torch(smi_header(driver, cuda), host="a100")
    assert refused.value.message == (
        f"the NVIDIA driver {driver} (CUDA {cuda}) on a100 is too old for torch {TESTED_TORCH}, "
        "the version gpurun is tested with (its builds need: CUDA 12.6 >= 525.60.13, CUDA 13.0 >= 580)"
    )
    assert refused.value.hint.startswith("upgrade the driver to 525.60.13 or newer; or choose a torch yourself")
    assert "--torch torch==2.7.1+cu118 --pip-arg=--extra-index-url=" in refused.value.hint


def test_a_failing_nvidia_smi_is_an_error_not_a_silent_cpu_install():
    broken = (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running.\n"
    )
    with pytest.raises(GpurunError) as refused:
        choose_torch(broken, exit_code=9, host="a100")
    assert refused.value.message.startswith("nvidia-smi fails on a100 (exit 9): NVIDIA-SMI has failed")
    assert f"--torch torch=={TESTED_TORCH}+cpu --pip-arg=--extra-index-url={PYTORCH}/cpu" in refused.value.hint


STACK = ["torch>=2.4", "transformers>=5.0", "peft>=0.17", "trl>=1.0", "datasets>=4.0", "accelerate>=1.0"]


def test_the_plan_line_says_which_torch_what_else_where_and_roughly_how_much():
    choice = choose_torch(smi_header("550.54.15", "12.4"), host="a100")
    plan = install_plan(STACK, None, (), choice)
    assert plan.requirements[0] == f"torch=={TESTED_TORCH}" and "torch>=2.4" not in plan.requirements
    assert plan.torch_pip_args == ("--index-url", f"{PYTORCH}/cu126")
    assert plan.summary("a100", "/home/me/gpurun/venv", free_bytes=120e9) == (
        f"setup a100: torch {TESTED_TORCH} (CUDA 12.6 build, for driver 550.54.15 (CUDA 12.4)) + transformers, "
        "peft, trl, datasets, accelerate into /home/me/gpurun/venv; about 3.2 GB to download "
        "(approximate, 120 GB free there)"
    )
    cpu = install_plan(STACK, None, (), choose_torch(None, host="a100")).summary("a100", "/v")
    assert "about 0.6 GB to download" in cpu


def test_a_torch_given_is_used_as_given_with_no_index_of_ours():
    plan = install_plan(STACK, "torch==2.13.0", ("--find-links=/opt/wheels",), None)
    assert plan.requirements[0] == "torch==2.13.0" and plan.torch_pip_args == ()
    assert plan.summary("a100", "/v").startswith("setup a100: torch==2.13.0 (as given) + transformers")
    assert "about 0.3 GB to download besides torch" in plan.summary("a100", "/v")


def test_an_index_the_user_passes_replaces_ours_and_the_line_says_so():
    assert replaces_index(["--index-url=http://mirror/simple"]) and replaces_index(["-i", "http://m"])
    assert replaces_index(["--no-index"]) and not replaces_index(["--find-links=/w", "--extra-index-url=http://x"])
    choice = choose_torch(None, host="a100")
    plan = install_plan(STACK, None, ("--index-url=http://mirror/simple",), choice)
    assert plan.torch_pip_args == ()
    assert plan.summary("a100", "/v").startswith(
        f"setup a100: torch {TESTED_TORCH} from the index you gave (gpurun would take the CPU build: no nvidia-smi"
    )


def test_torch_is_installed_alone_first_from_its_index_and_the_users_pip_args_come_last():
    reqs = [f"torch=={TESTED_TORCH}", "torchvision", "peft>=0.17"]
    steps = pip_steps("/v/bin/python", ["--find-links=/w"], ["--index-url", f"{PYTORCH}/cu126"], reqs)
    pip = ["/v/bin/python", "-m", "pip", "install", "--disable-pip-version-check"]
    assert steps == [
        [*pip, "--index-url", f"{PYTORCH}/cu126", "--find-links=/w", f"torch=={TESTED_TORCH}"],
        [*pip, "--find-links=/w", *reqs],
    ]
    assert pip_steps("/v/bin/python", [], [], reqs) == [[*pip, *reqs]]


def test_the_pinned_torch_is_the_one_ci_installs():
    default = re.search(r"TORCH_SPEC:-torch==([\d.]+)\}", (REPO / "scripts" / "setup.sh").read_text())
    assert default and default.group(1) == TESTED_TORCH


def test_setup_of_a_host_that_has_the_stack_prints_no_plan(ssh_project):
    done = run_gpurun(ssh_project, "setup", "--host", "a100")
    assert done.returncode == 0, done.stderr
    assert "a100 already has the training stack" in done.stdout and "setup a100:" not in done.stdout


# --- Ctrl-C, for real: pip hangs on an index that accepts and never answers -----------------------


class SilentIndex:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: pip waits on it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                self.accepted.append(self.sock.accept()[0])
            except TimeoutError:
                continue

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        for conn in [*self.accepted, self.sock]:
            conn.close()


def pips_of(venv: Path) -> list[int]:
    """Pids of the processes running that venv's pip (their command lines, from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="replace").startswith(str(venv)) and b"pip" in argv:
            found.append(int(entry.name))
    return found


@pytest.fixture
def bare_hosts(tmp_path, sshd, host_workdir) -> Path:
    """A project whose ssh host `a100` and `local` host both run Debian's python3 (no torch), with a
    fake nvidia-smi of driver 550 on a100's PATH."""
    if not Path(BARE_PYTHON).exists():
        pytest.skip(f"no {BARE_PYTHON} on this machine")
    if subprocess.run([BARE_PYTHON, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip(f"{BARE_PYTHON} already has torch: nothing for setup to do")
    if subprocess.run([BARE_PYTHON, "-c", "import ensurepip"], capture_output=True).returncode != 0:
        pytest.skip(f"{BARE_PYTHON} cannot make a venv with pip (apt-get install python3-venv)")
    smi = tmp_path / "fake-smi"
    smi.mkdir()
    (smi / "nvidia-smi").write_text(f"#!/bin/sh\ncat <<'EOF'\n{smi_header('550.54.15', '12.4')}EOF\n")
    (smi / "nvidia-smi").chmod(0o755)
    hosts = {
        "local": {"transport": "local", "python": BARE_PYTHON, "workdir": str(tmp_path / "local-workdir")},
        "a100": sshd.host_entry(host_workdir, python=BARE_PYTHON, env={"PATH": f"{smi}:{os.environ['PATH']}"}),
    }
    return write_project(tmp_path / "project", hosts, default="a100", task_name="hr")


@pytest.mark.parametrize("host", ["a100", "local"])
def test_ctrl_c_stops_pip_on_the_host_and_leaves_the_venv_unused(bare_hosts, tmp_path, host_workdir, host):
    venv = (host_workdir if host == "a100" else tmp_path / "local-workdir") / "venv"
    index = SilentIndex()
    try:
        # Its own session, so the test can do what a terminal does on Ctrl-C: SIGINT to the whole
        # foreground process group (gpurun and the ssh it started).
        proc = subprocess.Popen(
            [*gpurun_argv(), "setup", "--host", host, f"--pip-arg=--index-url=http://127.0.0.1:{index.port}/simple"],
            cwd=bare_hosts,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "250"},
            start_new_session=True,
            # As from a terminal: a suite started in the background by a non-interactive shell inherits SIGINT
            # ignored, and Python then never raises KeyboardInterrupt (gpurun would not see the Ctrl-C at all).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            wait_for(lambda: pips_of(venv) and index.accepted, 120, "pip to hang on the silent index")
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        wait_for(lambda: not pips_of(venv), 30, f"no pip of {venv} left running; gpurun said: {out}{err}")
    finally:
        index.close()
    assert proc.returncode == 130, out + err
    assert err.strip() == (
        f"setup of {host} interrupted: pip is stopped on the host and the venv stays unused; "
        f"run gpurun setup --host {host} again to carry on"
    )
    assert "Traceback" not in out + err
    if host == "a100":  # the plan came before pip started; the fake driver 550 would get the CUDA 12.6 build
        assert (
            f"setup a100: torch {TESTED_TORCH} from the index you gave (gpurun would take the CUDA 12.6 build, "
            f"for driver 550.54.15 (CUDA 12.4)) + transformers, peft, trl, datasets, accelerate, bitsandbytes, "
            f"tensorboard, gguf into {venv}; about 3.2 GB to download (approximate, " in out
        ), out
    else:
        assert f"setup local: torch {TESTED_TORCH} from the index you gave (gpurun would take the CPU build" in out
    assert (venv / "bin" / "python").exists() and not (venv / ".gpurun-ready").exists()
    refused = run_gpurun(bare_hosts, "train", "tasks/hr", "--host", host)
    assert refused.returncode == 1 and "lacks torch" in refused.stderr, refused.stderr


def test_the_host_half_relays_pips_lines_and_its_exit_code_with_heartbeats_while_it_is_quiet(capsys):
    from trainer.host.setup import HEARTBEAT_S, _run_pip

    quiet = f"import time; print('Collecting peft', flush=True); time.sleep({HEARTBEAT_S * 2.5}); raise SystemExit(3)"
    assert _run_pip([sys.executable, "-c", quiet]) == 3
    replies = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert replies[0] == {"log": "Collecting peft"}
    assert replies[1:] and all(reply == {"alive": 1} for reply in replies[1:])
