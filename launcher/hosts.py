"""hosts.yaml (and plain ~/.ssh/config aliases) -> Host.

default: local
hosts:
  local: {transport: local, workdir: ~/.cache/gpurun/local}
  a100:  {ssh: ubuntu@10.0.0.5, port: 22, identity: ~/.ssh/id_ed25519,
          python: ~/venvs/train/bin/python, workdir: ~/gpurun, gpus: auto}
"""

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from launcher.errors import GpurunError
from launcher.project import HOSTS_FILE

LOCAL = "local"
HOST_ENV = "GPURUN_HOST"  # the default host for every command, without editing hosts.yaml
HOST_KEYS = (
    "transport",
    "ssh",
    "port",
    "user",
    "identity",
    "known_hosts",
    "python",
    "workdir",
    "env",
    "gpus",
    "secret_env",
    "scheduler",
    "slurm",
    "nodes",
    "node_addr",
)
SLURM_KEYS = ("partition", "account", "time", "nodes", "gpus_per_node", "sbatch_args", "signal_lead")


@dataclass
class Host:
    name: str
    transport: str = "ssh"  # "ssh" or "local"
    ssh: str = ""  # user@host, host, or a ~/.ssh/config alias
    port: int | None = None
    user: str | None = None
    identity: str | None = None
    known_hosts: str | None = None  # a known_hosts file of its own; default: ssh's usual ones
    python: str = "python3"
    workdir: str = "~/gpurun"
    env: dict[str, str] = field(default_factory=dict)
    gpus: str | None = None  # "auto", "0,1", or None (leave CUDA_VISIBLE_DEVICES alone)
    secret_env: list[str] = field(default_factory=list)
    scheduler: str | None = None  # "slurm": the ssh target is a login node, runs go through sbatch
    slurm: dict = field(default_factory=dict)  # partition, account, time, nodes, gpus_per_node, sbatch_args
    # For a name not in hosts.yaml (taken as an ssh target): the hosts.yaml names it is close to, so a
    # typo that ssh cannot resolve gets "did you mean". Worked out here, where it costs no round trip.
    nearby: list[str] = field(default_factory=list)
    # Several hosts, one run (launcher/nodes.py): `nodes:` names other entries; `node_addr:` is the address the
    # other nodes reach this one at (default: the HostName the laptop's ssh resolves for it).
    nodes: list[str] = field(default_factory=list)
    node_addr: str | None = None

    @property
    def is_local(self) -> bool:
        return self.transport == "local"


def embedded_local() -> Host:
    return Host(name=LOCAL, transport="local", python=sys.executable, workdir="~/.cache/gpurun/local")


def load_hosts(root: Path) -> tuple[str, dict[str, Host]]:
    """(default host name, hosts by name). Without hosts.yaml: just the embedded `local` host."""
    hosts = {LOCAL: embedded_local()}
    path = root / HOSTS_FILE
    if not path.is_file():
        return LOCAL, hosts
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise GpurunError(f"{where}: not valid YAML", "check indentation and quoting") from None
    if not isinstance(raw, dict):
        raise GpurunError(f"{path}: expected `default:` and `hosts:`", "see README: hosts.yaml")
    for name, entry in (raw.get("hosts") or {}).items():
        hosts[str(name)] = _host_from_entry(str(name), entry or {}, path)
    for name, host in hosts.items():
        if host.nodes:
            node_names(name, hosts, f"{path}: hosts.{name}.nodes")  # a wrong node is told whatever the command
    default = str(raw.get("default", LOCAL))
    return default, hosts


def refuse_unknown_keys(mapping: dict, known, where: str) -> None:
    """One error for the first key that is not in `known`, with the closest known key as the hint."""
    for key in mapping:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known)}"
            raise GpurunError(f"{where}.{key}: unknown key", hint)


def _host_from_entry(name: str, entry: dict, path: Path) -> Host:
    if not isinstance(entry, dict):
        raise GpurunError(f"{path}: hosts.{name}: expected a mapping", "e.g. a100: {ssh: user@10.0.0.5}")
    refuse_unknown_keys(entry, HOST_KEYS, f"{path}: hosts.{name}")
    transport = entry.get("transport", "local" if name == LOCAL and "ssh" not in entry else "ssh")
    if transport not in ("ssh", "local"):
        raise GpurunError(f"{path}: hosts.{name}.transport: {transport!r}", "use ssh or local")
    host = embedded_local() if transport == "local" else Host(name=name, ssh=name)
    host.name = name
    host.transport = transport
    for key in ("ssh", "user", "identity", "known_hosts", "python", "workdir"):
        if entry.get(key) is not None:
            setattr(host, key, str(entry[key]))
    if entry.get("port") is not None:
        try:
            host.port = int(entry["port"])
        except (TypeError, ValueError):
            raise GpurunError(f"{path}: hosts.{name}.port: not a number", "e.g. port: 22") from None
    if entry.get("gpus") is not None:
        host.gpus = str(entry["gpus"])
    env = entry.get("env") or {}
    if not isinstance(env, dict):
        raise GpurunError(f"{path}: hosts.{name}.env: expected a mapping", "e.g. env: {HF_HOME: /data/hf}")
    host.env = {str(k): str(v) for k, v in env.items()}
    if host.workdir.strip().rstrip("/") in ("", "~", ".", "$HOME") or host.workdir.strip() == "/":
        # gpurun writes and mirrors (with --delete) below the workdir: never a whole home or disk.
        raise GpurunError(f"{path}: hosts.{name}.workdir: {host.workdir!r} is too broad", "e.g. workdir: ~/gpurun")
    if host.transport == "ssh" and (host.ssh.startswith("-") or not host.ssh.strip()):
        # ssh would read "-oProxyCommand=..." as an option: a target must look like [user@]host.
        raise GpurunError(f"{path}: hosts.{name}.ssh: {host.ssh!r} is not an ssh target", "e.g. ssh: user@10.0.0.5")
    host.secret_env = [str(s) for s in entry.get("secret_env") or []]
    if entry.get("node_addr") is not None:
        host.node_addr = str(entry["node_addr"])
    if entry.get("nodes") is not None:
        nodes = entry["nodes"]
        if not isinstance(nodes, list) or not all(isinstance(n, str) and n.strip() for n in nodes):
            hint = "a list of host names, e.g. nodes: [a100-1, a100-2]"
            raise GpurunError(f"{path}: hosts.{name}.nodes: {nodes!r}", hint)
        host.nodes = [n.strip() for n in nodes]
    if entry.get("scheduler") is not None or entry.get("slurm") is not None:
        host.scheduler, host.slurm = _slurm_settings(name, entry, path)
    return host


def _slurm_settings(name: str, entry: dict, path: Path) -> tuple[str, dict]:
    """`scheduler: slurm` and its `slurm:` mapping, checked: every mistake here would otherwise be sbatch's
    refusal after a push, or worse a job that runs with a setting the user did not mean."""
    where = f"{path}: hosts.{name}"
    if entry.get("scheduler") != "slurm":
        raise GpurunError(f"{where}.scheduler: {entry.get('scheduler')!r}", "the one scheduler gpurun knows: slurm")
    slurm = entry.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise GpurunError(f"{where}.slurm: expected a mapping", "e.g. slurm: {partition: gpu, time: '24:00:00'}")
    refuse_unknown_keys(slurm, SLURM_KEYS, f"{where}.slurm")
    out: dict = {}
    for key in ("partition", "account", "time"):
        value = slurm.get(key)
        if value is None:
            continue
        if key == "time" and not isinstance(value, str):
            # YAML 1.1 reads an unquoted 24:00:00 as the number 86400, which Slurm would take as 86400 minutes.
            raise GpurunError(
                f"{where}.slurm.time: {value!r} is a number to YAML", "quote it: time: '24:00:00' (or '1440' minutes)"
            )
        if not isinstance(value, str | int) or isinstance(value, bool) or not re.fullmatch(r"[\w.:+-]+", str(value)):
            example = {"partition": "gpu", "account": "my-lab", "time": "'24:00:00' (quoted, or YAML reads a number)"}
            raise GpurunError(f"{where}.slurm.{key}: {value!r} is not a Slurm {key}", f"e.g. {key}: {example[key]}")
        out[key] = str(value)
    for key, least in (("nodes", 1), ("gpus_per_node", 0), ("signal_lead", 1)):
        value = slurm.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise GpurunError(f"{where}.slurm.{key}: {value!r}", f"a whole number, at least {least}")
        out[key] = value
    args = slurm.get("sbatch_args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) and a.startswith("-") and "\n" not in a for a in args):
        hint = "a list of sbatch options, e.g. sbatch_args: [--qos=high, --mem=64G]"
        raise GpurunError(f"{where}.slurm.sbatch_args: {args!r}", hint)
    out["sbatch_args"] = list(args)
    return "slurm", out


def resolve_host(root: Path, name: str | None) -> Host:
    """A host by name; a name not in hosts.yaml is taken as an ssh target or ~/.ssh/config alias."""
    default, hosts = load_hosts(root)
    name = name or os.environ.get(HOST_ENV) or default  # --host, then GPURUN_HOST, then hosts.yaml's default
    nodes = node_names(name, hosts, "--host")
    if nodes:  # several hosts, one run: node 0 holds the run's output, logs and events
        return hosts[nodes[0]]
    if name in hosts:
        return hosts[name]
    if name.startswith("-") or not name.strip():
        raise GpurunError(f"not a host name: {name!r}", f"known hosts: {', '.join(hosts)}")
    return Host(name=name, ssh=name, nearby=difflib.get_close_matches(name, list(hosts), n=3))


def node_names(name: str, hosts: dict[str, Host], where: str) -> list[str] | None:
    """The hosts of a several-host run (an entry with `nodes:`, or `--host a,b`), checked; None for one host."""
    if name in hosts and hosts[name].nodes:
        names = hosts[name].nodes
    elif "," in name:
        names = [n.strip() for n in name.split(",")]
    else:
        return None
    for node in names:
        if node not in hosts:
            close = difflib.get_close_matches(node, list(hosts), n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"known hosts: {', '.join(hosts)}"
            raise GpurunError(f"{where}: node {node!r} is not a host in hosts.yaml", hint)
        if names.count(node) > 1:
            raise GpurunError(f"{where}: node {node!r} is listed twice", "each host is one node: list it once")
        if hosts[node].scheduler == "slurm":
            raise GpurunError(
                f"{where}: node {node!r} is a Slurm login node",
                f"use its slurm.nodes for several nodes there: gpurun train --host {node}",
            )
        if hosts[node].nodes:
            raise GpurunError(f"{where}: node {node!r} is itself a list of nodes", "list the hosts themselves")
    if len(names) < 2:
        raise GpurunError(f"{where}: {names!r} is one node", "list two hosts or more, e.g. nodes: [a100-1, a100-2]")
    return names
