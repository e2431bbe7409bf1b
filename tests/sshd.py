"""Our own sshd on 127.0.0.1: generated host and user keys, its own config and known_hosts.

Used by the tests' fixture and by the benchmarks. Never touches the system's sshd or ~/.ssh.
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

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


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


def start_sshd(base: Path, authorized_keys: str | None = None, allow_users: str | None = None) -> SSHServer:
    """Generate keys and a config under `base` and start sshd there (stopped by the caller).

    `authorized_keys`: sshd's AuthorizedKeysFile (default: one under `base`, for the test's own user;
    another account needs one in its home, e.g. ".ssh/authorized_keys", which sshd reads as that user)."""
    base.mkdir(parents=True, exist_ok=True)
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
                f"AuthorizedKeysFile {authorized_keys or base / 'authorized_keys'}",
                *([f"AllowUsers {allow_users}"] if allow_users else []),
                f"PidFile {base / 'sshd.pid'}",
                "StrictModes no",  # our keys live under /tmp
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "AcceptEnv LANG LC_*",
                "SetEnv OMP_NUM_THREADS=1",  # as tests/conftest.py sets it for the processes tests start
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
    return server
