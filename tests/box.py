"""The README's own host, for real: a "box" account and a "laptop" account on this machine.

What a new user has, and what the rest of the suite does not: the laptop runs gpurun from a venv of
Debian's Python holding only the launcher (`pip install .`, no torch), reaches the box only through
an `~/.ssh/config` alias with its own key and known_hosts, and the box account has nothing but Debian's
`python3` and rsync, a `~` workdir and a home of its own. Both accounts and their homes are created
here and removed afterwards; the machine's own sshd and ~/.ssh are never touched (OpenSSH reads
~/.ssh/config from the account's passwd home, so the laptop side needs an account of its own).
"""

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.readme import readme_blocks
from tests.sshd import SSHServer, start_sshd

REPO = Path(__file__).resolve().parent.parent
BOX_USER = "gpurun-box"
LAPTOP_USER = "gpurun-laptop"
ALIAS = "gpubox"
DEBIAN_PYTHON = "/usr/bin/python3"


@dataclass
class Account:
    name: str
    home: Path
    uid: int
    gid: int

    def env(self, **extra: str) -> dict:
        """A login-like environment: nothing of the test's own (no venv on PATH, no GPURUN_CACHE)."""
        path = f"{self.home}/venv/bin:/usr/local/bin:/usr/bin:/bin"
        base = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "PATH": path}
        return {**base, "LANG": "C.UTF-8", "COLUMNS": "200", **extra}

    def run(self, argv: list[str], cwd: Path | None = None, timeout: float = 600, **env: str):
        return subprocess.run(
            argv,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env=self.env(**env),
            cwd=cwd or self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def check(self, argv: list[str], **kwargs) -> str:
        proc = self.run(argv, **kwargs)
        assert proc.returncode == 0, f"{argv} as {self.name}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return proc.stdout

    def own(self, path: Path) -> None:
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, self.uid, self.gid)


def make_account(name: str) -> Account:
    remove_account(name)  # left over from an interrupted run
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, capture_output=True)
    subprocess.run(["usermod", "-p", "*", name], check=True)  # no password, not locked: a key logs in
    entry = pwd.getpwnam(name)
    return Account(name, Path(entry.pw_dir), entry.pw_uid, entry.pw_gid)


def remove_account(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    for _ in range(50):  # its detached jobs and ssh sessions first, or userdel refuses
        if subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)
    subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)


@dataclass
class ReadmeBox:
    laptop: Account
    box: Account
    sshd: SSHServer
    project: Path  # the laptop's project folder

    @property
    def workdir(self) -> Path:
        return self.box.home / "gpurun"

    def gpurun(self, *args: str, timeout: float = 600, **env: str):
        return self.laptop.run([str(self.laptop.home / "venv" / "bin" / "gpurun"), *args], cwd=self.project, **env)


def install_laptop(laptop: Account) -> None:
    """gpurun's launcher as a laptop has it: `pip install .` into a venv of Debian's Python, no training stack."""
    src = laptop.home / "src"
    src.mkdir()
    for name in ("launcher", "trainer", "pyproject.toml", "README.md"):
        item = REPO / name
        copy = shutil.copytree if item.is_dir() else shutil.copy2
        copy(item, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if item.is_dir() else {}))
    laptop.own(src)
    laptop.check([DEBIAN_PYTHON, "-m", "venv", str(laptop.home / "venv")])
    pip = [str(laptop.home / "venv" / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(src)]
    laptop.check(pip, timeout=600)


def connect_by_alias(laptop: Account, box: Account, base: Path) -> SSHServer:
    """An sshd for the box account, and the laptop's key, ~/.ssh/config alias and known_hosts for it."""
    ssh_dir = laptop.home / ".ssh"
    laptop.check(["mkdir", "-m", "700", "-p", str(ssh_dir)])
    laptop.check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / "id_ed25519")])
    box_ssh = box.home / ".ssh"
    box_ssh.mkdir(mode=0o700)
    shutil.copy(ssh_dir / "id_ed25519.pub", box_ssh / "authorized_keys")
    box.own(box_ssh)
    server = start_sshd(base, authorized_keys=".ssh/authorized_keys", allow_users=box.name)
    (ssh_dir / "config").write_text(
        f"Host {ALIAS}\n    HostName 127.0.0.1\n    Port {server.port}\n    User {box.name}\n"
        "    IdentityFile ~/.ssh/id_ed25519\n"
    )
    shutil.copy(server.known_hosts, ssh_dir / "known_hosts")
    laptop.own(ssh_dir)
    return server


def readme_hosts_yaml(port: int) -> str:
    """The README's hosts.yaml example, verbatim but for the ssh target (our alias) and the port."""
    text = readme_blocks("## hosts.yaml")[0]
    assert "ssh: ubuntu@a100.example.com" in text and "port: 22" in text, text
    return text.replace("ubuntu@a100.example.com", ALIAS).replace("port: 22", f"port: {port}")
