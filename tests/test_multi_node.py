"""Several hosts, one run: two sshds on 127.0.0.1, each with its own workdir, are two nodes of one run under
torchrun (one process each, gloo on the CPU). Every rank trains in step with the other, node 0 alone writes the
adapter, stop and resume hold across nodes with no shared disk, a killed worker on node 1 fails the run naming
node 1, and a node that cannot be reached starts nothing anywhere."""

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from launcher.errors import GpurunError
from launcher.hosts import Host, load_hosts, node_names, resolve_host
from launcher.nodes import Node, failure_cause, node_addr
from launcher.remote import remote_for
from launcher.runs import History
from tests.conftest import run_gpurun, write_project
from tests.readme import readme_blocks
from tests.sshd import free_port, start_sshd
from tests.test_lifecycle import final_loss, host_events, last_step, latest_run_id, wait_for
from tests.test_multi_gpu import rank_pid
from tests.test_torchrun import processes_of
from trainer.checkpoints import COMPLETE_MARKER
from trainer.host.torchrun import NODES_JOIN_TIMEOUT_S, torchrun_options
from trainer.training.run import DIGEST_ENV


@pytest.fixture(scope="module")
def second_sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd-node1"))
    yield server
    server.stop()


@pytest.fixture
def two_nodes(tmp_path, sshd, second_sshd, model_cache) -> tuple[Path, Path, Path]:
    """(project, node 0's workdir, node 1's workdir); hosts n0 and n1, and `pair: {nodes: [n0, n1]}`."""
    env = {"GPURUN_CACHE": str(model_cache), DIGEST_ENV: "1", "OMP_NUM_THREADS": "1"}
    workdirs = tmp_path / "node0-workdir", tmp_path / "node1-workdir"
    hosts = {
        "n0": sshd.host_entry(workdirs[0], env=env),
        "n1": second_sshd.host_entry(workdirs[1], env=env),
        "pair": {"nodes": ["n0", "n1"]},
    }
    return write_project(tmp_path / "project", hosts, task_name="hr"), *workdirs


def train_pair(project: Path, *extra: str, host: str = "pair") -> str:
    started = run_gpurun(project, "train", "tasks/hr", "--host", host, *extra)
    assert started.returncode == 0, started.stdout + started.stderr
    return latest_run_id(project)


# ---------------------------------------------------------------- pure


def test_a_node_gets_torchruns_static_rendezvous_at_node_0_with_its_own_rank_and_a_join_timeout(tmp_path):
    nodes = {"count": 2, "rank": 1, "addr": "10.0.0.5", "port": 29411, "run_id": "hr-1"}
    options = torchrun_options(1, tmp_path, nodes, ["python", "-c", "x", "run", str(tmp_path)])
    for expected in (
        "--nnodes=2",
        "--node-rank=1",
        "--rdzv-backend=static",
        "--rdzv-endpoint=10.0.0.5:29411",
        "--rdzv-id=hr-1",
        f"--rdzv-conf=timeout={NODES_JOIN_TIMEOUT_S}",
        "--nproc-per-node=1",
        "--max-restarts=0",
    ):
        assert expected in options, expected
    assert "--standalone" not in options and options[-5:] == ["python", "-c", "x", "run", str(tmp_path)]
    assert NODES_JOIN_TIMEOUT_S <= 60  # a node that never comes fails the run within a minute
    one_host = torchrun_options(2, tmp_path, None, ["python"])
    assert "--standalone" in one_host and not any(o.startswith("--nnodes") for o in one_host)


def test_a_wrong_node_list_is_one_error_with_a_hint():
    hosts = {
        "a100-1": Host("a100-1"),
        "a100-2": Host("a100-2"),
        "login": Host("login", scheduler="slurm"),
        "pair": Host("pair", nodes=["a100-1", "a100-2"]),
    }
    assert node_names("pair", hosts, "--host") == ["a100-1", "a100-2"]
    assert node_names("a100-2,a100-1", hosts, "--host") == ["a100-2", "a100-1"]
    assert node_names("a100-1", hosts, "--host") is None
    cases = {
        "a100-1,a10-2": ("node 'a10-2' is not a host in hosts.yaml", "did you mean `a100-2`?"),
        "a100-1,a100-1": ("node 'a100-1' is listed twice", "list it once"),
        "a100-1,login": ("node 'login' is a Slurm login node", "slurm.nodes"),
        "a100-1,pair": ("node 'pair' is itself a list of nodes", "list the hosts themselves"),
    }
    for name, (message, hint) in cases.items():
        with pytest.raises(GpurunError) as caught:
            node_names(name, hosts, "--host")
        assert message in caught.value.message and hint in caught.value.hint, name


def test_a_bad_nodes_entry_in_hosts_yaml_is_refused_even_by_a_command_for_another_host(tmp_path):
    project = write_project(tmp_path / "project", {"a": {"ssh": "a"}, "pair": {"nodes": ["a", "b"]}})
    result = run_gpurun(project, "push", "tasks/demo", "--host", "a")
    assert result.returncode != 0
    assert "hosts.pair.nodes: node 'b' is not a host in hosts.yaml" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_node_0s_address_is_its_node_addr_else_the_hostname_ssh_resolves_for_it(sshd, tmp_path):
    entry = Host("n0", ssh=f"{sshd.user}@127.0.0.1", port=sshd.port)
    assert node_addr(entry) == "127.0.0.1"
    entry.node_addr = "10.1.2.3"
    assert node_addr(entry) == "10.1.2.3"


def test_the_cause_of_a_failure_is_the_node_killed_by_a_signal_not_its_peers_that_exited_after_it():
    nodes = [Node(rank, Host(f"n{rank}"), remote_for(Host(f"n{rank}"))) for rank in range(3)]
    states = [
        {"state": "failed", "exit_code": 1, "ended_at": 10.0},
        {"state": "succeeded", "exit_code": 0, "ended_at": 9.0},
        {"state": "failed", "exit_code": 137, "ended_at": 11.0},
    ]
    assert failure_cause(nodes, states)[0].rank == 2
    states[2] = {"state": "failed", "exit_code": 1, "ended_at": 12.0}
    assert failure_cause(nodes, states)[0].rank == 0  # plain exits: the earliest
    assert failure_cause(nodes, [{"state": "succeeded"}] * 3) is None


# ---------------------------------------------------------------- real nodes


def test_two_hosts_train_one_run_in_step_and_stop_then_resume_reaches_the_uninterrupted_runs_loss(two_nodes):
    project, node0, node1 = two_nodes
    total = 12
    steps = ["--set", f"training.max_steps={total}", "--set", "training.logging_steps=1"]
    steps += ["--set", "training.save_steps=4", "--set", "training.eval_steps=100"]
    reference_id = train_pair(project, *steps)
    follow = run_gpurun(project, "logs", "-f", reference_id, timeout=1800)
    run0, run1 = node0 / "runs" / reference_id, node1 / "runs" / reference_id
    assert follow.returncode == 0, follow.stdout[-3000:] + (run1 / "train.rank1.log").read_text()[-3000:]

    # Both nodes trained, as ranks 0 and 1 of one world of 2, and ended with the same weights.
    log0, log1 = (run0 / "train.log").read_text(), (run1 / "train.rank1.log").read_text()
    assert "process: rank 0 of 2 (local rank 0)" in log0 and "process: rank 1 of 2 (local rank 0)" in log1
    assert host_events(run0)[0]["processes"] == 2
    digests = [(run0 / "trained_digest.rank0").read_text(), (run1 / "trained_digest.rank1").read_text()]
    assert len(digests[0]) == 65 and digests[0] == digests[1]
    # Node 0 alone writes the adapter; pull takes node 0's output.
    assert (run0 / "output" / "adapter_model.safetensors").exists()
    assert not (run1 / "output" / "adapter_model.safetensors").exists() and "saved adapter to" not in log1
    assert json.loads((run1 / "run.json").read_text())["nodes"]["rank"] == 1
    status = run_gpurun(project, "status", reference_id)
    assert "node n0 (rank 0): succeeded, exit 0" in status.stdout, status.stdout
    assert "node n1 (rank 1): succeeded, exit 0" in status.stdout
    pulled = run_gpurun(project, "pull", reference_id)
    assert pulled.returncode == 0, pulled.stderr
    assert (project / "tasks" / "hr" / "runs" / reference_id / "adapter_model.safetensors").exists()
    reference = final_loss(run0, total)

    # Stop reaches both nodes: one complete checkpoint, on node 0.
    run_id = train_pair(project, *steps)
    run0, run1 = node0 / "runs" / run_id, node1 / "runs" / run_id
    wait_for(lambda: last_step(run0) >= 5, timeout=600, what="step 5")
    stop = run_gpurun(project, "stop", run_id, "--grace", "120")
    assert stop.returncode == 0 and f"{run_id}: stopped" in stop.stdout, stop.stdout + stop.stderr
    stopped = [e for e in host_events(run0) if e["kind"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] < total, stopped
    assert (run0 / "output" / stopped[0]["checkpoint"] / COMPLETE_MARKER).exists()
    assert (run0 / "trained_digest.rank0").read_text() == (run1 / "trained_digest.rank1").read_text()
    assert processes_of(run0) == [] and processes_of(run1) == []

    # --resume: node 0's checkpoint is copied to node 1 (no shared disk), and both continue from it.
    resumed = run_gpurun(project, "train", "--resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    new_id = latest_run_id(project)
    assert run_gpurun(project, "logs", "-f", new_id, timeout=1800).returncode == 0
    assert (node1 / "runs" / run_id / "output" / stopped[0]["checkpoint"] / COMPLETE_MARKER).exists()
    assert (
        f"resuming from {node1 / 'runs' / run_id / 'output'}"
        in (node1 / "runs" / new_id / "train.rank1.log").read_text()
    )
    assert last_step(node0 / "runs" / new_id) == total
    assert final_loss(node0 / "runs" / new_id, total) == pytest.approx(reference, rel=1e-4)


def test_a_worker_killed_on_node_1_fails_the_run_naming_node_1_and_137_and_leaves_no_process(two_nodes):
    project, node0, node1 = two_nodes
    run_id = train_pair(project, "--set", "training.max_steps=400", host="n0,n1")
    run0, run1 = node0 / "runs" / run_id, node1 / "runs" / run_id
    wait_for(lambda: last_step(run0) >= 2, timeout=600, what="step 2")
    os.kill(rank_pid(run1, 1), signal.SIGKILL)
    # Node 0's worker finds its peer gone in the next collective; logs -f follows node 0 and names the cause.
    follow = run_gpurun(project, "logs", "-f", run_id, timeout=30)
    assert follow.returncode == 137, follow.stdout[-2000:]
    assert "node n1 failed: exit 137" in follow.stdout
    assert History(project).get(run_id).state == "failed"
    wait_for(lambda: not processes_of(run0) and not processes_of(run1), timeout=30, what="no process of the run left")


def test_a_node_whose_sshd_is_down_fails_train_with_one_error_naming_it_and_starts_nothing_anywhere(two_nodes):
    project, node0, node1 = two_nodes
    hosts = yaml.safe_load((project / "hosts.yaml").read_text())
    hosts["hosts"]["n1"]["port"] = free_port()  # nothing listens there
    (project / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    result = run_gpurun(project, "train", "tasks/hr", "--host", "pair")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "n1" in errors[0], result.stderr
    assert "Hint:" in result.stderr and "Traceback" not in result.stderr
    assert not (node0 / "runs").exists() and not (node1 / "runs").exists()
    assert History(project).all() == []


def test_the_readmes_several_hosts_entry_is_one_run_over_its_two_nodes(tmp_path):
    block = "".join(readme_blocks("## Several hosts, one run"))
    (tmp_path / "hosts.yaml").write_text(block)
    assert resolve_host(tmp_path, "a100s").name == "a100-1"  # node 0 holds the run's output
    _, hosts = load_hosts(tmp_path)
    assert node_names("a100s", hosts, "--host") == ["a100-1", "a100-2"]
    assert node_addr(hosts["a100-1"]) == "10.0.0.11"
