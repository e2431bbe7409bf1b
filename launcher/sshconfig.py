"""What an ssh target really is, as `ssh -G` resolves it: the hints that fix a failed login are built from it.

A `--host gpubox` that is an ~/.ssh/config alias names neither the machine nor the key: `ssh-keyscan gpubox`
would ask DNS for a "gpubox" and the wrong-key hint would name hosts.yaml keys the user never wrote.
`ssh -G` prints the configuration ssh would use for the very command line gpurun runs (the same -o/-p/-i/-l
options, ~/.ssh/config applied), without connecting. It runs only after a failure, never on the success path.
"""

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# What ssh tries when nothing names a key (ssh -G lists them all, existing or not).
DEFAULT_IDENTITIES = frozenset(
    f"~/.ssh/{name}"
    for name in ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa")
)


@dataclass
class SSHConfig:
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: list[str] = field(default_factory=list)  # as ssh -G prints them (~ kept)
    known_hosts_files: list[str] = field(default_factory=list)  # UserKnownHostsFile, first one is written to
    identities_only: bool = False
    host_key_alias: str = ""
    proxy_jump: str = ""
    proxy_command: str = ""


def parse_ssh_config(text: str) -> SSHConfig | None:
    """`ssh -G` output -> SSHConfig (None when it has no hostname line)."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            values.setdefault(key.lower(), []).append(value.strip())

    def one(key: str) -> str:
        return (values.get(key) or [""])[0]

    if not one("hostname"):
        return None
    try:
        port = int(one("port") or 22)
    except ValueError:
        port = 22
    proxy_jump = one("proxyjump")
    proxy_command = one("proxycommand")
    return SSHConfig(
        hostname=one("hostname"),
        port=port,
        user=one("user"),
        identity_files=values.get("identityfile", []),
        # One line, several files separated by spaces (ssh -G prints them that way).
        known_hosts_files=one("userknownhostsfile").split(),
        identities_only=one("identitiesonly") == "yes",
        host_key_alias=one("hostkeyalias"),
        proxy_jump="" if proxy_jump == "none" else proxy_jump,
        proxy_command="" if proxy_command == "none" else proxy_command,
    )


def resolve_ssh_config(ssh_argv: list[str], target: str) -> SSHConfig | None:
    """Ask `ssh -G` what `ssh_argv target` would connect to; None when ssh cannot say (then callers guess)."""
    try:
        proc = subprocess.run(
            [*ssh_argv, "-G", target], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_ssh_config(proc.stdout) if proc.returncode == 0 else None


def known_hosts_name(config: SSHConfig) -> str:
    """The name ssh looks the host key up under: `[host]:port` off port 22, the HostKeyAlias if there is one."""
    name = config.host_key_alias or config.hostname
    return name if config.port == 22 else f"[{name}]:{config.port}"


def keyscan_hint(config: SSHConfig) -> str:
    """The command that adds the host's key where ssh will look for it, e.g. `ssh-keyscan -p 2299 10.0.0.5 >> ...`."""
    port = f"-p {config.port} " if config.port != 22 else ""
    known = config.known_hosts_files[0] if config.known_hosts_files else "~/.ssh/known_hosts"
    scan = f"ssh-keyscan {port}{shlex.quote(config.hostname)}"
    if config.proxy_jump:
        # ssh-keyscan cannot go through a jump host: run it on the jump host, which can reach the box.
        scan = f"ssh {shlex.quote(config.proxy_jump.split(',')[-1])} {shlex.quote(scan)}"
    if config.host_key_alias:
        # ssh looks the key up under the alias, while ssh-keyscan writes the real name: rename it on the way.
        alias = known_hosts_name(config)
        scan += f" | sed 's/^[^ ]*/{alias}/'"
    return f"check its fingerprint, then add it: {scan} >> {known}"


def identity_hint(config: SSHConfig, hosts_yaml_identity: str | None, host_name: str) -> str:
    """Which keys ssh offered, as what user, and where to name the right one."""
    where = f"{config.hostname}" + (f":{config.port}" if config.port != 22 else "")
    user = config.user or "you"
    offered = [path for path in config.identity_files if Path(os.path.expanduser(path)).exists()]
    agent = not config.identities_only and bool(os.environ.get("SSH_AUTH_SOCK"))
    fix = (
        f"set identity: of {host_name} in hosts.yaml"
        if hosts_yaml_identity
        else f"name the right key with IdentityFile in ~/.ssh/config (or identity: of {host_name} in hosts.yaml)"
    )
    if offered:
        keys = ", ".join(offered) + (" and ssh-agent's keys" if agent else "")
        return (
            f"ssh logged in to {where} as {user} with {keys}: add the public key (.pub) to "
            f"~{user}/.ssh/authorized_keys there, or {fix}"
        )
    if agent:
        return f"ssh logged in to {where} as {user} with ssh-agent's keys only (no key file found): {fix}"
    named = [path for path in config.identity_files if path not in DEFAULT_IDENTITIES]
    missing = ", ".join(named) if named else "~/.ssh/id_*"
    return f"ssh logged in to {where} as {user} with no key at all ({missing}: not found): {fix}"


def forget_key_hint(config: SSHConfig) -> str:
    """`ssh-keygen -R` with the name and file ssh really used."""
    known = config.known_hosts_files[0] if config.known_hosts_files else ""
    name = shlex.quote(known_hosts_name(config))
    return f"if the host was really reinstalled, remove the old key: ssh-keygen -R {name}" + (
        f" -f {known}" if known else ""
    )
