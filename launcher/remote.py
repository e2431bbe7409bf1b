"""How a host is reached: one interface, `SSHRemote` (OpenSSH client) and `LocalRemote` (subprocess).

Commands are argv lists. Over SSH they are joined with `shlex.join`, so every value reaching the
remote shell is quoted. rsync is given the very same ssh command line (`rsh_argv`), so the
command channel and the file channel use one resolved host, port, user, key and known_hosts.

Why the OpenSSH client rather than paramiko: rsync needs it anyway, it reads ~/.ssh/config
(aliases, ProxyJump, agents) exactly as the user's own `ssh` does, and host-key checking is
OpenSSH's own `StrictHostKeyChecking=yes`.
"""

import fcntl
import hashlib
import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from launcher.errors import GpurunError
from launcher.hosts import Host
from launcher.sshconfig import (
    SSHConfig,
    forget_key_hint,
    identity_hint,
    keyscan_hint,
    known_hosts_name,
    resolve_ssh_config,
)
from trainer.rundir import SECRET_NAMES

SSH_CONNECT_TIMEOUT_S = 15
MUX_PERSIST_S = 120  # an idle shared connection stays this long, for the next gpurun command
MUX_OFF_ENV = "GPURUN_SSH_MUX"  # set to 0 to give every command its own connection


class Remote:
    """What every transport offers. Paths are host paths; `workdir` is where gpurun keeps its files."""

    host: Host
    workdir: str

    def run(self, argv: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def stream(self, argv: list[str]) -> subprocess.Popen:
        raise NotImplementedError

    def connect(self) -> GpurunError | None:
        """Why the host cannot be reached, or None; a local host always can."""
        return None

    def rsync_path(self, path: str) -> str:
        """How rsync names a host path."""
        raise NotImplementedError

    def rsh_argv(self) -> list[str] | None:
        """The remote-shell command rsync should use (None: local copy)."""
        raise NotImplementedError

    def host_python(self) -> str:
        """`python:` as the host runs it (launcher/hostcalls.py builds the trainer's commands with it).
        Quoted values never meet a shell's `~` expansion, and commands
        start in the login's home, so `~/venvs/x/bin/python` is sent as `./venvs/x/bin/python`."""
        python = self.host.python
        return "./" + python[2:] if python.startswith("~/") else python

    def path(self, *parts: str) -> str:
        return "/".join([self.workdir.rstrip("/"), *parts])

    def _check(self, argv, proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or "").strip().splitlines()[-5:])
            raise GpurunError(
                f"on {self.host.name}: `{shlex.join(argv)[:200]}` exited with {proc.returncode}",
                tail or "run it by hand on the host to see why",
            )
        return proc


class LocalRemote(Remote):
    """The `local` host: the same code path as SSH, on this machine, without SSH."""

    def __init__(self, host: Host):
        self.host = host
        self.workdir = str(Path(host.workdir).expanduser())

    def host_python(self):
        return str(Path(self.host.python).expanduser())

    def run(self, argv, input=None, check=True):
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, text=True, cwd=Path.home())
        except FileNotFoundError as exc:
            raise GpurunError(f"on local: {exc.filename} not found", "check `python:` of the local host") from None
        return self._check(argv, proc) if check else proc

    def stream(self, argv):
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=Path.home())

    def rsync_path(self, path):
        return path

    def rsh_argv(self):
        return None


class SSHRemote(Remote):
    def __init__(self, host: Host):
        self.host = host
        # Relative host paths are relative to the login's home, for ssh commands and rsync alike:
        # "~/gpurun" becomes "gpurun" so neither needs the remote shell to expand "~".
        workdir = host.workdir
        if workdir in ("~", "~/"):
            workdir = "."
        elif workdir.startswith("~/"):
            workdir = workdir[2:]
        self.workdir = workdir

    def ssh_argv(self) -> list[str]:
        """The ssh command line every command and rsync use: through the shared connection when there is one."""
        base = self._base_ssh_argv()
        path = self._control_path(base)
        return [*base, "-o", f"ControlPath={path}", "-o", "ControlMaster=no"] if path else base

    def _base_ssh_argv(self) -> list[str]:
        h = self.host
        argv = [
            "ssh",
            "-o", "BatchMode=yes",  # never prompt: a password prompt would hang a detached step
            "-o", "StrictHostKeyChecking=yes",  # an unknown or changed host key is refused, never accepted
            "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}",
            "-o", "ServerAliveInterval=10",  # notice a dead link in ~30 s instead of TCP's minutes
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",  # keep banners out of the JSON we read back
        ]  # fmt: skip
        if h.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={Path(h.known_hosts).expanduser()}"]
        if h.port:
            argv += ["-p", str(h.port)]
        if h.identity:
            argv += ["-i", str(Path(h.identity).expanduser()), "-o", "IdentitiesOnly=yes"]
        if h.user:
            argv += ["-l", h.user]
        return argv

    def target(self) -> str:
        return self.host.ssh or self.host.name

    def ssh_config(self) -> SSHConfig | None:
        """What ssh really uses for this host (an ~/.ssh/config alias's HostName, Port, User, IdentityFile)."""
        return resolve_ssh_config(self._base_ssh_argv(), self.target())

    def _argv(self, argv: list[str]) -> list[str]:
        return [*self.ssh_argv(), self.target(), "--", shlex.join(argv)]

    # One SSH connection shared by every command and rsync of this host (OpenSSH's ControlMaster):
    # `train` makes three round trips and `pull` two or three, and on a distant host each new
    # connection costs several network round trips of handshake. The master is started explicitly,
    # detached and with no pipe of ours, so a captured command never waits for it; if it dies (a
    # dropped link), ssh falls back to a direct connection and the next command starts a new one.

    def _control_path(self, base: list[str]) -> str | None:
        if os.environ.get(MUX_OFF_ENV) == "0":
            return None
        folder = Path(tempfile.gettempdir()) / f"gpurun-ssh-{os.getuid()}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            info = folder.stat()
        except OSError:
            return None
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            return None  # someone else's folder: never put our sockets there
        # Keyed by the whole command line: hosts.yaml entries with other keys or known_hosts never share.
        key = hashlib.sha256("\0".join([*base, self.target()]).encode()).hexdigest()[:20]
        return str(folder / key)  # short: a unix socket path must fit in 108 bytes

    def connect(self) -> GpurunError | None:
        """Make sure the shared connection is up (a cheap check when it is); a no-op without multiplexing.

        Returns, rather than raises, why the host cannot be reached: a follower retries instead.
        """
        base = self._base_ssh_argv()
        path = self._control_path(base)
        if path is None:
            return None
        mux = ["-o", f"ControlPath={path}"]
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two gpuruns at once start one master, not two
            if Path(path).exists():
                check = subprocess.run([*base, *mux, "-O", "check", self.target()], capture_output=True)
                if check.returncode == 0:
                    return None
                Path(path).unlink(missing_ok=True)  # a master that died without cleaning up
            with tempfile.TemporaryFile() as err:
                master = [*base, *mux, "-o", "ControlMaster=yes", "-o", f"ControlPersist={MUX_PERSIST_S}"]
                try:
                    code = subprocess.run(
                        [*master, "-N", "-f", self.target()],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    ).returncode
                except FileNotFoundError:
                    raise GpurunError(
                        "ssh not found", "install OpenSSH's client (apt-get install openssh-client)"
                    ) from None
                err.seek(0)
                stderr = err.read().decode(errors="replace")
        return ssh_failure(self.host, stderr) if code == 255 else None

    def run(self, argv, input=None, check=True):
        failure = self.connect()
        if failure:
            raise failure  # what the command itself would have hit, without waiting for it twice
        full = self._argv(argv)
        try:
            proc = subprocess.run(full, input=input, capture_output=True, text=True)
        except FileNotFoundError:
            raise GpurunError("ssh not found", "install OpenSSH's client (apt-get install openssh-client)") from None
        if proc.returncode == 255:
            failure = ssh_failure(self.host, proc.stderr)
            # A link that dropped after ssh connected may have dropped after the command began on the host;
            # one that never connected (refused, unknown host, login or host key refused) ran nothing there.
            failure.may_have_run = failure.kind == "reach" and "connect to host" not in proc.stderr
            raise failure
        return self._check(argv, proc) if check else proc

    def stream(self, argv):
        self.connect()  # on failure the stream's own ssh fails too, and its reader (follow) reconnects
        return subprocess.Popen(
            self._argv(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )

    def rsync_path(self, path):
        return f"{self.target()}:{path}"

    def rsh_argv(self):
        failure = self.connect()
        if failure:
            raise failure
        return self.ssh_argv()


class SSHFailure(GpurunError):
    """ssh's own failure (exit 255). `kind` lets a retrying reader (follow) tell a refusal no retry can
    fix (host key) from a link that may come back."""

    def __init__(self, kind: str, message: str, hint: str):
        super().__init__(message, hint)
        self.kind = kind
        self.may_have_run = False  # whether the command may have run on the host all the same (see SSHRemote.run)


HOST_KEY_KINDS = ("host_key_changed", "host_key_unknown")


def ssh_failure(host: Host, stderr: str) -> SSHFailure:
    """Turn ssh's exit 255 into an error that says what to do, in the terms of the user's own ssh config."""
    text = (stderr or "").strip()
    last = text.splitlines()[-1] if text else "ssh failed"

    def resolved() -> SSHConfig:
        # What ssh really used (an ~/.ssh/config alias's HostName, Port, User, IdentityFile); asked only
        # now that something failed. Without an answer, the best guess from hosts.yaml.
        found = SSHRemote(host).ssh_config()
        if found:
            return found
        user, _, hostname = (host.ssh or host.name).rpartition("@")
        known = [str(Path(host.known_hosts).expanduser())] if host.known_hosts else []
        identities = [host.identity] if host.identity else []
        return SSHConfig(hostname, host.port or 22, host.user or user, identities, known, bool(host.identity))

    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Host key for" in text and "has changed" in text:
        return SSHFailure(
            "host_key_changed",
            f"the host key of {host.name} has changed: refusing to connect",
            forget_key_hint(resolved()),
        )
    if "Host key verification failed" in text or "host key is known" in text:
        config = resolved()
        return SSHFailure(
            "host_key_unknown",
            f"the host key of {host.name} ({known_hosts_name(config)}) is not known: refusing to connect",
            keyscan_hint(config),
        )
    if "Permission denied" in text:
        config = resolved()
        return SSHFailure(
            "login",
            f"{host.name} refused the login as {config.user or 'you'} ({last})",
            identity_hint(config, host.identity, host.name),
        )
    if "Could not resolve hostname" in text:
        if host.nearby:  # a --host not in hosts.yaml, taken as an ssh target: most likely a typo
            hint = f"did you mean {host.nearby[0]}? ({host.name} is not in hosts.yaml, so ssh was asked for it)"
        else:
            hint = "check `ssh:` in hosts.yaml or the HostName in ~/.ssh/config"
        return SSHFailure("resolve", f"cannot resolve {host.name}: {last}", hint)
    port = f"-p {host.port} " if host.port else ""
    return SSHFailure("reach", f"cannot reach {host.name}: {last}", f"try: ssh {port}{host.ssh or host.name} true")


# Exit 0: `python:` is there. 3: it does not exist, 4: it is not an executable file. A failure prints the
# host's own python3, for the hint. `~/` means the login's home, as in hosts.yaml; a bare name is looked
# up on PATH (after the host's `env:`, which may set PATH).
PYTHON_CHECK = """
case $1 in "~/"*) set -- "$HOME/${1#"~/"}";; esac
case $1 in */*) [ -f "$1" ] && [ -x "$1" ] && exit 0;; *) command -v "$1" >/dev/null && exit 0;; esac
command -v python3
case $1 in */*) [ -e "$1" ] && exit 4;; esac
exit 3
"""
PYTHON_CHECKED_DIR = "host-python-ok"


def check_python(remote: Remote, cache: Path) -> None:
    """Refuse at once, naming the path, when the host's `python:` does not exist.

    `train` would otherwise spend its local checks (seconds: tokenizer and token counts) before the
    host's start tells. One short command through the shared connection (which `train` opens anyway),
    and only until it has once succeeded: the positive answer is kept as a marker under `cache`.
    """
    host = remote.host
    key = json.dumps([host.transport, host.ssh, host.port, host.user, host.python, host.env], sort_keys=True)
    marker = cache / PYTHON_CHECKED_DIR / hashlib.sha256(key.encode()).hexdigest()[:20]
    if marker.exists():
        return
    assignments = [f"{k}={v}" for k, v in host.env.items()]
    proc = remote.run(["env", *assignments, "sh", "-c", PYTHON_CHECK, "sh", host.python], check=False)
    if proc.returncode in (3, 4):
        what = "does not exist" if proc.returncode == 3 else "is not an executable file"
        found = proc.stdout.strip().splitlines()
        there = f" (its python3 is {found[-1]})" if found else ""
        raise GpurunError(
            f"on {host.name}: python {host.python} {what}",
            f"set python: of {host.name} in hosts.yaml to a Python 3.10+ on {host.name}{there}",
        )
    if proc.returncode == 0:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    # Anything else (an odd login shell, say) proves nothing either way: the start will tell.


def remote_for(host: Host) -> Remote:
    return LocalRemote(host) if host.is_local else SSHRemote(host)


def launcher_env_secrets(host: Host) -> dict[str, str]:
    """Secrets to hand the job: the usual tokens plus the host's `secret_env`, from this laptop's environment."""
    names = [*SECRET_NAMES, *host.secret_env]
    return {name: os.environ[name] for name in names if os.environ.get(name)}
