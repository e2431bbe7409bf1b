"""Fixtures: a real sshd on 127.0.0.1, a throwaway project, and the gpurun CLI as a user runs it.

The sshd is our own (own config, host key, user key, known_hosts, pid); the system's sshd and the
machine's ~/.ssh are never touched.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def gpurun_argv() -> list[str]:
    script = Path(sys.executable).parent / "gpurun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "launcher.cli"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_gpurun(project: Path, *args: str, env: dict | None = None, timeout: float = 300) -> Result:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run(
        [*gpurun_argv(), *args], cwd=project, capture_output=True, text=True, env=full_env, timeout=timeout
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SSHServer:
    port: int
    user: str
    identity: Path
    known_hosts: Path
    config: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.config.parent / "sshd.log", "ab"),  # noqa: SIM115 - lives as long as sshd
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(self.config.parent / 'sshd.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    def host_entry(self, workdir: Path, **extra) -> dict:
        return {
            "ssh": f"{self.user}@127.0.0.1",
            "port": self.port,
            "identity": str(self.identity),
            "known_hosts": str(self.known_hosts),
            "python": sys.executable,
            "workdir": str(workdir),
            **extra,
        }


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> SSHServer:
    if not Path(SSHD).exists():
        pytest.fail("no sshd: install openssh-server (the README's test command does)")
    base = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
    (base / "authorized_keys").write_text((base / "user_key.pub").read_text())
    port = free_port()
    host_pub = (base / "host_key.pub").read_text().split()
    (base / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {base / 'host_key'}",
                f"AuthorizedKeysFile {base / 'authorized_keys'}",
                f"PidFile {base / 'sshd.pid'}",
                "StrictModes no",  # our keys live under /tmp
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "AcceptEnv LANG LC_*",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation dir sshd insists on
    os.chmod(base / "user_key", 0o600)
    server = SSHServer(
        port=port,
        user=os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(),
        identity=base / "user_key",
        known_hosts=base / "known_hosts",
        config=config,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One builtin:tiny build shared by every run of the session (it is deterministic)."""
    path = tmp_path_factory.mktemp("model-cache")
    os.environ["GPURUN_CACHE"] = str(path)
    return path


def write_project(root: Path, hosts: dict, default: str = "local", task_name: str = "demo", steps: int = 6) -> Path:
    """A project folder with one task copied from tasks/demo (trimmed to a few steps) and a hosts.yaml."""
    task = root / "tasks" / task_name
    shutil.copytree(REPO / "tasks" / "demo", task, ignore=shutil.ignore_patterns("runs"))
    config = yaml.safe_load((task / "task.yaml").read_text())
    config["training"].update(max_steps=steps, eval_steps=3, save_steps=3, logging_steps=1)
    (task / "task.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "hosts.yaml").write_text(yaml.safe_dump({"default": default, "hosts": hosts}, sort_keys=False))
    return root


@pytest.fixture
def local_project(tmp_path, model_cache) -> Path:
    hosts = {"local": {"transport": "local", "workdir": str(tmp_path / "local-workdir")}}
    return write_project(tmp_path / "project", hosts)


@pytest.fixture
def host_workdir(tmp_path) -> Path:
    """The test ssh host's workdir: its own per test, so tests never see each other's files."""
    return tmp_path / "host-workdir"


@pytest.fixture
def ssh_project(tmp_path, sshd, model_cache, host_workdir) -> Path:
    hosts = {
        "local": {"transport": "local", "workdir": str(tmp_path / "local-workdir")},
        "a100": sshd.host_entry(host_workdir, env={"GPURUN_CACHE": str(model_cache)}),
    }
    return write_project(tmp_path / "project", hosts, task_name="hr")
