"""One shared SSH connection per host: fewer handshakes, and a dead one is never a problem."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from launcher.hosts import resolve_host
from launcher.remote import SSHRemote
from tests.conftest import run_gpurun


def logins(sshd) -> int:
    return (sshd.config.parent / "sshd.log").read_text(errors="replace").count("Accepted publickey")


def master_pid(project) -> int | None:
    remote = SSHRemote(resolve_host(project, "a100"))
    base = remote._base_ssh_argv()
    path = remote._control_path(base)
    check = subprocess.run([*base, "-o", f"ControlPath={path}", "-O", "check", remote.target()], capture_output=True)
    found = re.search(rb"pid=(\d+)", check.stderr)
    return int(found.group(1)) if check.returncode == 0 and found else None


def kill_and_wait(pid: int, sig: int) -> None:
    os.kill(pid, sig)
    deadline = time.time() + 10
    while alive(pid) and time.time() < deadline:
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except OSError:
        return False


def test_ssh_argv_goes_through_the_shared_connection_unless_turned_off(ssh_project, monkeypatch):
    remote = SSHRemote(resolve_host(ssh_project, "a100"))
    assert "ControlMaster=no" in remote.ssh_argv()
    monkeypatch.setenv("GPURUN_SSH_MUX", "0")
    assert not any(a.startswith("ControlPath=") for a in remote.ssh_argv())


def test_train_logs_in_once_and_a_killed_master_is_replaced(ssh_project, sshd):
    pid = master_pid(ssh_project)
    if pid:  # an earlier test's connection: start from none
        kill_and_wait(pid, signal.SIGTERM)
    before = logins(sshd)
    started = run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100")
    assert started.returncode == 0, started.stderr
    # Without sharing, train logs in three times (task rsync, trainer rsync, start).
    assert logins(sshd) - before == 1
    assert run_gpurun(ssh_project, "logs", "-f").returncode == 0
    assert logins(sshd) - before == 1

    kill_and_wait(master_pid(ssh_project), signal.SIGKILL)  # a master that dies without cleaning up its socket
    status = run_gpurun(ssh_project, "status")
    assert status.returncode == 0 and "succeeded" in status.stdout, status.stdout + status.stderr
    assert logins(sshd) - before == 2
    assert master_pid(ssh_project) is not None
