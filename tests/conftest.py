"""Fixtures: a real sshd on 127.0.0.1, a throwaway project, and the gpurun CLI as a user runs it.

The sshd is our own (own config, host key, user key, known_hosts, pid); the system's sshd and the
machine's ~/.ssh are never touched.

Markers come from the fixtures a test uses (see KIND_OF_FIXTURE): `ssh`, `trains`, `slurm`, `box`, `nodes`.
A test that uses none of them, or is marked `smoke` (one real loop over sshd, one real training run), is also
marked `fast`: `bash scripts/test.sh --fast` runs just those.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.sshd import SSHD, SSHServer, start_sshd

REPO = Path(__file__).resolve().parent.parent

# The test workers share two cores: torch's default of one thread per core makes each training process spin-wait
# for a core another worker holds. Measured on a run of the demo task beside a busy worker: 38.6 s of CPU with
# the default, 16.8 s with one thread. Every process a test starts inherits it; tests/sshd.py sets it for ssh sessions.
# A thread count changes the speed, not what a run does.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> SSHServer:
    if not Path(SSHD).exists():
        pytest.fail("no sshd: install openssh-server (the README's test command does)")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


# What a test does, told by the fixtures it uses (a test that trains needs the model cache).
KIND_OF_FIXTURE = {
    "sshd": "ssh",
    "model_cache": "trains",
    "cluster": "slurm",
    "readme_box": "box",
    "two_nodes": "nodes",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        kinds = {kind for name, kind in KIND_OF_FIXTURE.items() if name in getattr(item, "fixturenames", ())}
        # A test that trains without the fixtures (it makes its own model cache) says so with a marker of the kind.
        kinds |= {mark.name for mark in item.iter_markers() if mark.name in KIND_OF_FIXTURE.values()}
        for kind in sorted(kinds):
            item.add_marker(kind)
        if not kinds or item.get_closest_marker("smoke"):
            item.add_marker("fast")
    items[:] = heaviest_files_first(items)


# The files whose tests take longest, slowest first (worker-seconds at stop 21, three workers: test_slurm 323,
# test_memory_estimate 281, test_torchrun 235, ...). scripts/test.sh hands files to the workers in collection order
# (--no-loadscope-reorder: xdist's own order puts files with many short tests first, and left the Slurm file to run
# alone at the end), so these start first and the many short files fill the gaps at the end. A file not listed that
# uses Slurm, a second node or a box account comes next.
SLOWEST_FILES = [
    "test_slurm.py",
    "test_memory_estimate.py",
    "test_torchrun.py",
    "test_resume.py",
    "test_readme_host.py",
    "test_multi_node.py",
    "test_state_faults.py",
    "test_gpus_and_secrets.py",
    "test_token_cache.py",
    "test_bad_tasks.py",
    "test_sync_safety.py",
    "test_loop_ssh.py",
]


def heaviest_files_first(items: list) -> list:
    def rank(item) -> int:
        name = Path(str(item.fspath)).name
        if name in SLOWEST_FILES:
            return SLOWEST_FILES.index(name)
        heavy = any(item.get_closest_marker(kind) for kind in ("slurm", "nodes", "box"))
        return len(SLOWEST_FILES) + (0 if heavy else 1)

    file_rank: dict[str, int] = {}
    for item in items:
        path = str(item.fspath)
        file_rank[path] = min(file_rank.get(path, 1 << 30), rank(item))
    return sorted(items, key=lambda item: file_rank[str(item.fspath)])  # stable: the rest keep pytest's order


def builtin_sources_key() -> str:
    """What builds builtin:tiny: a model cache keyed by it is shared by every worker and every session."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "trainer" / "builtin").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """One builtin:tiny build for every test worker and every session of this checkout's builtin sources: the
    folder is keyed by their content and built under a lock (the first worker builds, the others wait and load)."""
    path = Path(tempfile.gettempdir()) / "gpurun-test-models" / builtin_sources_key()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["GPURUN_CACHE"] = str(path)
    from trainer.builtin.tiny import ensure_tiny  # imports the stack lazily: building needs torch

    with open(path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_tiny(path / "models")  # GPURUN_CACHE/models, where default_cache_dir() looks
    return path


def write_project(root: Path, hosts: dict, default: str = "local", task_name: str = "demo", steps: int = 6) -> Path:
    """A project folder with one task copied from tasks/demo (trimmed to a few steps) and a hosts.yaml."""
    task = root / "tasks" / task_name
    shutil.copytree(REPO / "tasks" / "demo", task, ignore=shutil.ignore_patterns("runs"))
    config = yaml.safe_load((task / "task.yaml").read_text())
    # Tests check plumbing, not learning: one ~650-token row a step and 8 eval rows make a step ~4x cheaper than the
    # demo's 4 rows (and an eval every 3 steps cost as much as the steps between) on 2 busy cores.
    config["training"].update(max_steps=steps, eval_steps=3, save_steps=3, logging_steps=1)
    config["training"].update(per_device_train_batch_size=1, per_device_eval_batch_size=8)
    eval_file = task / "data" / "eval.jsonl"
    eval_file.write_text("".join(eval_file.read_text().splitlines(keepends=True)[:8]))
    # The suite's figure and the samples are the demo's business; tests need them to run, fast (each generated
    # token re-reads a ~650-token prompt of tools on 2 cores: the demo's 3 samples + 4+4 suite replies took 5 s a run).
    config["eval_suite"].update(limit=2, max_new_tokens=16)
    config["samples"] = 1
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
