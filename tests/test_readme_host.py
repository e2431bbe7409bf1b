"""The README's host entry, verbatim, on a real box account reached through an ~/.ssh/config alias.

A new user's first run failed where every other test passed: a `~/gpurun` workdir, a plain python3
without the training stack, and a laptop whose gpurun is not on the box. So here the laptop account
runs the README's commands as written, against the README's hosts.yaml (only the alias and port
changed), from `gpurun setup` to `pull --merged`. Its tests run in order and share the two accounts.
"""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.box import (
    ALIAS,
    BOX_USER,
    DEBIAN_PYTHON,
    LAPTOP_USER,
    ReadmeBox,
    connect_by_alias,
    install_laptop,
    make_account,
    readme_hosts_yaml,
    remove_account,
)
from tests.conftest import write_project

LOCAL_WHEELS = Path("/opt/wheels")  # the CPU build of torch that this machine keeps on disk
DECOY = 'raise SystemExit("a decoy trainer package was imported instead of the pushed one")\n'


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "creating the box and laptop accounts needs root (CI runs as root)"
    if not Path(DEBIAN_PYTHON).exists() or not shutil.which("useradd"):
        return f"needs {DEBIAN_PYTHON} and useradd (Debian)"
    if subprocess.run([DEBIAN_PYTHON, "-c", "import torch"], capture_output=True).returncode == 0:
        return f"{DEBIAN_PYTHON} already has torch: the box would not need setup"
    return None


@pytest.fixture(scope="module")
def readme_box(tmp_path_factory):
    if why := _why_not():
        pytest.skip(why)
    laptop, box = make_account(LAPTOP_USER), make_account(BOX_USER)
    server = None
    try:
        install_laptop(laptop)
        server = connect_by_alias(laptop, box, tmp_path_factory.mktemp("box-sshd"))
        project = write_project(laptop.home / "project", {}, task_name="hr", steps=6)
        (project / "hosts.yaml").write_text(readme_hosts_yaml(server.port))
        laptop.own(project)
        yield ReadmeBox(laptop, box, server, project)
    finally:
        if server:
            server.stop()
        remove_account(BOX_USER)
        remove_account(LAPTOP_USER)


def started_run_id(stdout: str) -> str:
    match = re.search(r"started (\S+) on a100", stdout)
    assert match, stdout
    return match.group(1)


def events_of(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plant_decoy(site: Path, box) -> None:
    """A different `trainer` package where the box's Python would find it first without our bootstrap."""
    (site / "trainer").mkdir(parents=True, exist_ok=True)
    (site / "trainer" / "__init__.py").write_text(DECOY)
    (site / "trainer" / "__main__.py").write_text(DECOY)
    box.own(site)


def test_the_bare_box_is_refused_then_setup_gives_it_the_stack(readme_box: ReadmeBox):
    box = readme_box.box
    refused = readme_box.gpurun("train", "tasks/hr", "--host", "a100")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "lacks torch" in refused.stderr and "Hint: run `gpurun setup --host a100`" in refused.stderr
    assert "Traceback" not in refused.stderr

    # Where a plain `python3 -m trainer` would look first: the login's home (the current directory) and
    # the user's site-packages. The pushed trainer must win over both.
    plant_decoy(box.home, box)
    version = box.check([DEBIAN_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).strip()
    plant_decoy(box.home / ".local" / "lib" / f"python{version}" / "site-packages", box)

    args = ["setup", "--host", "a100", "--torch", "torch==2.13.0"]
    if LOCAL_WHEELS.is_dir():  # only the package registry is reachable here: torch's CPU wheel is on disk
        args.append(f"--pip-arg=--find-links={LOCAL_WHEELS}")
    setup = readme_box.gpurun(*args, timeout=1200)
    venv = readme_box.workdir / "venv"
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    assert f"a100 now has the training stack: runs use {venv}/bin/python" in setup.stdout
    assert "torch 2.13.0" in setup.stdout and "CUDA: not available" in setup.stdout
    assert json.loads((venv / ".gpurun-ready").read_text())["packages"]["peft"]  # written last, once verified
    # The venv does not see the user's site-packages; a decoy in its own site-packages stands for a
    # gpurun that was pip-installed there.
    plant_decoy(next((venv / "lib").glob("python3.*")) / "site-packages", box)

    again = readme_box.gpurun("setup", "--host", "a100")
    assert again.returncode == 0 and "a100 already has the training stack" in again.stdout, again.stderr


def test_the_readme_loop_runs_the_pushed_trainer_in_the_tilde_workdir(readme_box: ReadmeBox):
    gpurun = readme_box.gpurun
    pushed = gpurun("push", "tasks/hr")
    assert pushed.returncode == 0, pushed.stderr
    started = gpurun("train", "--host", "a100")
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = started_run_id(started.stdout)
    follow = gpurun("logs", "-f")
    run_dir = readme_box.workdir / "runs" / run_id
    assert follow.returncode == 0, follow.stdout[-3000:] + follow.stderr + (run_dir / "train.log").read_text()[-3000:]
    pulled = gpurun("pull")
    assert pulled.returncode == 0, pulled.stderr
    local = readme_box.project / "tasks" / "hr" / "runs" / run_id
    assert (local / "adapter_model.safetensors").exists()
    status = gpurun("status")
    assert status.returncode == 0 and "succeeded" in status.stdout, status.stdout + status.stderr

    # `~/gpurun` resolved once, on the box, to the box account's absolute path; the trainer that ran is
    # the copy the launcher pushed there, not a decoy.
    workdir = str(readme_box.workdir)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["workdir"] == workdir
    assert record["trainer_path"].startswith(f"{workdir}/trainer/") and record["trainer_path"].endswith("/trainer")
    start = events_of(run_dir)[0]
    assert start["kind"] == "start" and start["trainer_path"] == record["trainer_path"]
    assert start["trainer_version"] == Path(record["trainer_path"]).parent.name == record["trainer_version"]
    assert start["python"] == f"{workdir}/venv/bin/python"
    assert "decoy" not in (run_dir / "train.log").read_text()


def test_stop_resume_merge_and_pull_merged_on_the_box(readme_box: ReadmeBox):
    gpurun = readme_box.gpurun
    started = gpurun("train", "tasks/hr", "--host", "a100", "--set", "training.max_steps=40")
    assert started.returncode == 0, started.stderr
    run_id = started_run_id(started.stdout)
    run_dir = readme_box.workdir / "runs" / run_id
    deadline = time.time() + 300
    while time.time() < deadline and not any(e.get("step", 0) >= 5 for e in events_of(run_dir)):
        time.sleep(0.2)
    stopped = gpurun("stop", run_id)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr

    resumed = gpurun("train", "--resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    child = started_run_id(resumed.stdout)
    follow = gpurun("logs", "-f", child)
    assert follow.returncode == 0, follow.stdout[-3000:] + follow.stderr
    done = [e for e in events_of(readme_box.workdir / "runs" / child) if e["kind"] == "done"]
    assert done and done[-1]["step"] == 40, done

    merged = gpurun("merge", child)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    pulled = gpurun("pull", child, "--merged")
    assert pulled.returncode == 0, pulled.stderr
    local = readme_box.project / "tasks" / "hr" / "runs" / child
    assert (local / "merged" / "config.json").exists()
    assert ALIAS in (readme_box.laptop.home / ".ssh" / "config").read_text()  # the alias was what gpurun used


def test_ssh_hints_name_what_the_alias_resolves_to(readme_box: ReadmeBox):
    """`--host gpubox`, a name hosts.yaml does not have: ssh's alias alone says where and with which key, and the
    hints must name its real HostName, Port and IdentityFile."""
    ssh_dir = readme_box.laptop.home / ".ssh"
    known = ssh_dir / "known_hosts"
    saved = known.read_text()
    known.write_text("")
    try:
        refused = readme_box.gpurun("push", "tasks/hr", "--host", ALIAS, GPURUN_SSH_MUX="0")
    finally:
        known.write_text(saved)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    port = readme_box.sshd.port
    assert "is not known: refusing to connect" in refused.stderr
    assert f"ssh-keyscan -p {port} 127.0.0.1 >> {known}" in refused.stderr, refused.stderr

    config = ssh_dir / "config"
    original = config.read_text()
    readme_box.laptop.check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / "other_key")])
    config.write_text(original.replace("~/.ssh/id_ed25519", "~/.ssh/other_key"))
    try:
        denied = readme_box.gpurun("push", "tasks/hr", "--host", ALIAS, GPURUN_SSH_MUX="0")
    finally:
        config.write_text(original)
    assert denied.returncode == 1, denied.stdout + denied.stderr
    assert f"as {BOX_USER}" in denied.stderr and "~/.ssh/other_key" in denied.stderr, denied.stderr
    assert "Traceback" not in refused.stderr + denied.stderr
