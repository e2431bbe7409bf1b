"""Several hosts, one run: a hosts.yaml entry `nodes: [a100-1, a100-2]` (or `--host a100-1,a100-2`).

Every node gets the task and the trainer (in parallel), then its own detached wrapper that runs torchrun with the
run's place among the nodes (trainer/host/torchrun.py). Node 0 comes first: its start picks the
rendezvous port, free there, and its output is the run's (logs, events, adapter, checkpoints: `pull` takes it).
No disk is shared: a resume copies node 0's checkpoint to the other nodes first.

The laptop's history keeps one record (host: the group's name, trainer_root: node 0's); the other nodes' trainer
roots are kept under the meta key `nodes:<run id>`.
"""

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import GpurunError
from launcher.hostcalls import fetch_states, host_error, start_run, stop_run
from launcher.hosts import Host, load_hosts, node_names
from launcher.remote import Remote, SSHRemote, remote_for
from launcher.runs import History, RunRecord
from launcher.sync import rsync_argv, run_rsync
from trainer.checkpoints import COMPLETE_MARKER

META_PREFIX = "nodes:"


@dataclass
class Node:
    rank: int
    host: Host
    remote: Remote
    trainer_root: str = ""


def resolve_nodes(root: Path, name: str | None) -> tuple[str, list[Node]] | None:
    """(the run's host name, its nodes) for a several-host run named by --host (or the default); None for one host."""
    import os

    from launcher.hosts import HOST_ENV

    default, hosts = load_hosts(root)
    name = name or os.environ.get(HOST_ENV) or default
    names = node_names(name, hosts, "--host")
    if not names:
        return None
    return name, [Node(rank, hosts[n], remote_for(hosts[n])) for rank, n in enumerate(names)]


def node_addr(host: Host) -> str:
    """Where the other nodes reach this one: its `node_addr`, else the HostName the laptop's ssh resolves for it."""
    if host.node_addr:
        return host.node_addr
    if host.is_local:
        return "127.0.0.1"
    config = SSHRemote(host).ssh_config()
    if config is not None:
        return config.hostname
    return host.ssh.rsplit("@", 1)[-1]


def node_spec(count: int, rank: int, addr: str, port: int, run_id: str) -> dict:
    """run.json's `nodes`: the run's place among the hosts, read by the host's wrapper (port 0: node 0 picks one)."""
    return {"count": count, "rank": rank, "addr": addr, "port": port, "run_id": run_id}


def each(nodes: list[Node], job) -> list:
    """job(node) on every node at once; the first failure (in node order) is raised, naming its node."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = [pool.submit(job, node) for node in nodes]
    results = []
    for node, future in zip(nodes, futures, strict=True):
        exc = future.exception()
        if isinstance(exc, GpurunError):
            message = exc.message if node.host.name in exc.message else f"node {node.host.name}: {exc.message}"
            raise GpurunError(message, exc.hint) from None
        if exc is not None:
            raise exc
        results.append(future.result())
    return results


def save_nodes(history: History, run_id: str, nodes: list[Node]) -> None:
    value = [{"host": n.host.name, "trainer_root": n.trainer_root} for n in nodes]
    history.set_meta(META_PREFIX + run_id, json.dumps(value))


def nodes_of(root: Path, history: History, record: RunRecord) -> list[Node] | None:
    """A recorded run's nodes (None: a one-host run)."""
    saved = history.get_meta(META_PREFIX + record.run_id)
    if not saved:
        return None
    _, hosts = load_hosts(root)
    out = []
    for rank, entry in enumerate(json.loads(saved)):
        if entry["host"] not in hosts:
            raise GpurunError(
                f"{record.run_id} ran on node {entry['host']!r}, which hosts.yaml no longer has",
                f"add hosts.{entry['host']} back to hosts.yaml",
            )
        host = hosts[entry["host"]]
        out.append(Node(rank, host, remote_for(host), entry["trainer_root"]))
    return out


def start_nodes(nodes: list[Node], run: dict, env: dict) -> tuple[dict, list[str]]:
    """Start node 0 (it picks the rendezvous port), then the others with it. If one refuses, the ones started are
    stopped: a half-started run would wait for its missing node until the rendezvous times out.
    Returns node 0's reply and the warnings of all."""
    addr = node_addr(nodes[0].host)
    run_id = run["run_id"]
    started: list[Node] = []
    replies: list[dict] = []
    try:
        port = 0
        for node in nodes[:1]:
            reply = start_one(node, {**run, "nodes": node_spec(len(nodes), 0, addr, 0, run_id)}, env)
            started.append(node)
            replies.append(reply)
            port = int(reply["rdzv_port"])

        def start_other(node: Node) -> dict:
            payload_run = {**run, "nodes": node_spec(len(nodes), node.rank, addr, port, run_id)}
            reply = start_one(node, payload_run, env)
            started.append(node)
            return reply

        replies += each(nodes[1:], start_other)
    except BaseException:
        if started:
            each(started, lambda node: stop_node(node, run_id, grace=5.0))
        raise
    warnings = [f"{n.host.name}: {w}" for n, r in zip(nodes, replies, strict=True) for w in r.get("warnings") or []]
    return replies[0], warnings


def start_one(node: Node, run: dict, env: dict) -> dict:
    reply, failure = start_run(node.remote, node.trainer_root, run["run_id"], {"run": run, "env": env})
    if reply is None:
        raise GpurunError(f"no answer from node {node.host.name} while starting {run['run_id']} ({failure})", "")
    if "error" in reply:
        raise host_error(f"node {node.host.name}", reply)
    return reply


def stop_node(node: Node, run_id: str, grace: float) -> dict:
    return stop_run(node.remote, node.trainer_root, run_id, grace, check=False)


def stop_all(nodes: list[Node], run_id: str, grace: float) -> dict:
    """A stop on every node at once (each saves on its own side; node 0's checkpoint is the run's): node 0's state."""
    return each(nodes, lambda node: stop_node(node, run_id, grace))[0]


def node_states(nodes: list[Node], run_id: str) -> list[dict]:
    """Each node's state as its host says it (unreachable: {"state": "unreachable", "error": ...})."""

    def ask(node: Node) -> dict:
        try:
            return fetch_states(node.remote, node.trainer_root, [run_id]).get(run_id) or {"state": "not_found"}
        except GpurunError as exc:
            return {"state": "unreachable", "error": exc.message}

    return each(nodes, ask)


def node_lines(nodes: list[Node], states: list[dict]) -> list[str]:
    """`node a100-2 (rank 1): failed, exit 137` for each node."""
    lines = []
    for node, state in zip(nodes, states, strict=True):
        text = f"node {node.host.name} (rank {node.rank}): {state.get('state')}"
        if state.get("exit_code") is not None:
            text += f", exit {state['exit_code']}"
        if state.get("step") is not None:
            text += f", step {state['step']}/{state.get('total_steps', '?')}"
        lines.append(text)
    return lines


def failure_cause(nodes: list[Node], states: list[dict]) -> tuple[Node, dict] | None:
    """The node whose failure ended the run: a death by a signal before an exit (the peers of a killed worker exit
    with errors a moment later because it left), then the earliest, then the lowest rank."""
    failed = [(n, s) for n, s in zip(nodes, states, strict=True) if s.get("state") in ("failed", "lost")]
    if not failed:
        return None

    def order(pair: tuple[Node, dict]) -> tuple:
        code = pair[1].get("exit_code")
        return (not (code is not None and code > 128), pair[1].get("ended_at") or 0, pair[0].rank)

    return min(failed, key=order)


def end_state(nodes: list[Node], run_id: str, state: dict, say) -> dict:
    """The run's end as `logs -f` reports it: node 0's, unless another node's failure ended it; that one is named."""
    states = [state, *node_states(nodes[1:], run_id)]
    cause = failure_cause(nodes, states)
    if cause is None or cause[0].rank == 0 or state.get("state") == "stopped":
        return state
    say(failure_text(*cause))
    return {**state, "state": "failed", "exit_code": cause[1].get("exit_code")}


def failure_text(node: Node, state: dict) -> str:
    code = state.get("exit_code")
    how = f"exit {code}" if code is not None else state.get("state", "failed")
    log = node.remote.path("runs", state.get("run_id", ""), "train.log")
    return f"node {node.host.name} failed: {how} (its log: {node.host.name}:{log})"


def copy_checkpoint(nodes: list[Node], run_id: str, checkpoint: str) -> None:
    """Node 0's complete checkpoint of `run_id` onto every other node (through the laptop: no disk is shared, and
    the nodes need not reach each other over ssh). Each node's own files there (its rng state) stay."""
    source = nodes[0].remote
    path = f"runs/{run_id}/output/{checkpoint}"
    with tempfile.TemporaryDirectory(prefix="gpurun-checkpoint-") as tmp:
        run_rsync(
            rsync_argv(source.rsync_path(source.path(path) + "/"), f"{tmp}/", rsh=source.rsh_argv()),
            f"copy of {checkpoint} from node {nodes[0].host.name}",
            host=source.host,
        )

        def push(node: Node) -> None:
            remote = node.remote
            remote.run(["mkdir", "-p", remote.path(f"runs/{run_id}/output")])
            dest = remote.rsync_path(remote.path(path) + "/")
            # The completeness marker last: a copy cut short is never taken for a checkpoint to resume from.
            for excludes in ((COMPLETE_MARKER,), ()):
                argv = rsync_argv(f"{tmp}/", dest, rsh=remote.rsh_argv(), excludes=excludes)
                run_rsync(argv, f"copy of {checkpoint} to node {node.host.name}", host=remote.host)

        each(nodes[1:], push)
