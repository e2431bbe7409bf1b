"""Time each step of the loop over a real local sshd, as ratios against baselines from the same run.

    python bench/loop.py            (after `bash scripts/setup.sh`; uses .venv's gpurun if present)

Baselines: one bare `ssh host true` round trip on a new connection, and one bare rsync of the same
task directory. Steps: push (cold, then unchanged), train-to-running, status, follow latency (event
written on the host -> received by the laptop), pull; the repeatable ones both with a connection per
command (GPURUN_SSH_MUX=0) and through gpurun's shared connection. Nothing here asserts: read the
numbers, set targets.

Then the laptop's cached checks (issue 17): `train` -> started on a warm host when only a training setting changed,
with the training stack on the laptop and without it (a second venv under the temp dir with only the launcher's
requirements, made once), on a small builtin:tiny task and on the demo's 400 rows; and `push` of an unchanged task
with data (1,000 files, 100 MB, plus the demo's rows) against a raw `rsync -a --delete` of the same folder over the
same ssh. `python bench/loop.py --checks` runs that part alone. Targets: train -> started <= 3 s with the stack,
push <= 1.3x the raw rsync.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launcher.hostcalls import trainer_command  # noqa: E402
from launcher.hosts import Host  # noqa: E402
from launcher.remote import SSHRemote  # noqa: E402
from launcher.sync import push_trainer  # noqa: E402
from tests.conftest import run_gpurun, write_project  # noqa: E402
from tests.sshd import start_sshd  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="gpurun-bench-"))
    os.environ["GPURUN_CACHE"] = str(base / "cache")
    server = start_sshd(base / "sshd")
    try:
        host_workdir = base / "host"
        entry = server.host_entry(host_workdir, env={"GPURUN_CACHE": str(base / "cache")})
        project = write_project(base / "project", {"a100": entry}, default="a100", task_name="hr", steps=20)
        host = Host(name="a100", **{k: v for k, v in entry.items() if k not in ("env",)})
        remote = SSHRemote(host)
        if "--checks" in sys.argv[1:]:
            cached_checks(base, project, remote)
            return
        direct = {"GPURUN_SSH_MUX": "0"}
        os.environ.update(direct)  # the baselines: a new connection each, as plain ssh and rsync do
        ssh_rtt = timed(lambda: remote.run(["true"]), repeat=5)
        rsync_argv = [
            "rsync", "-rt", "--mkpath", "-e", " ".join(remote.ssh_argv()),
            f"{project}/tasks/hr/", f"{host.ssh}:{base}/bare-rsync/",
        ]  # fmt: skip
        bare_rsync = timed(lambda: subprocess.run(rsync_argv, check=True, capture_output=True))
        del os.environ["GPURUN_SSH_MUX"]
        ssh_shared = timed(lambda: remote.run(["true"]), repeat=5)

        def gpurun(*args, env=None):
            result = run_gpurun(project, *args, env=env)
            assert result.returncode == 0, result.stderr
            return result

        push_cold = timed(lambda: gpurun("push", "tasks/hr"))
        train = timed(lambda: gpurun("train"))  # first train of this task: token checks run
        gpurun("logs", "-f")
        both = {}
        for label, env in (("new connections", direct), ("shared connection", None)):
            both[label] = {
                "push, unchanged": timed(lambda env=env: gpurun("push", "tasks/hr", env=env), repeat=3),
                "train -> running, again": timed(lambda env=env: gpurun("train", env=env)),  # checks cached
                "status": timed(lambda env=env: gpurun("status", env=env), repeat=3),
            }
            job_start = time.perf_counter()
            gpurun("logs", "-f", env=env)
            both[label]["logs -f until a 20-step job ends"] = time.perf_counter() - job_start
            both[label]["pull"] = timed(lambda env=env: gpurun("pull", env=env))
        latency = follow_latency(remote, base)
        rows = [
            ("ssh round trip, new connection (baseline)", ssh_rtt, ssh_rtt),
            ("ssh round trip, shared connection", ssh_shared, ssh_rtt),
            ("bare rsync of the task (baseline)", bare_rsync, bare_rsync),
            ("gpurun push, cold", push_cold, bare_rsync),
            ("gpurun train -> running, first", train, ssh_rtt),
            ("follow latency (median of 20)", latency, ssh_rtt),
        ]
        for label, steps in both.items():
            for name, seconds in steps.items():
                rows.append((f"gpurun {name} ({label})", seconds, bare_rsync if "pu" in name else ssh_rtt))
        print(f"{'step':58} {'seconds':>8} {'ratio':>7}  (against the baseline of its kind: rsync for push/pull)")
        for name, seconds, baseline in rows:
            print(f"{name:58} {seconds:8.3f} {seconds / baseline:7.2f}")
        print()
        cached_checks(base, project, remote)
    finally:
        server.stop()


def no_stack_python(base: Path) -> str:
    """A Python with the launcher's requirements only (no torch, transformers, trl): the laptop without the
    training stack. Made once under the temp dir; this checkout is on its path through a .pth file."""
    venv = Path(tempfile.gettempdir()) / "gpurun-bench-nostack-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "click>=8.1", "rich>=13", "pyyaml>=6"]
        subprocess.run(pip, check=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "gpurun-checkout.pth").write_text(str(REPO) + "\n")
    probe = "import importlib.util as u; assert u.find_spec('torch') is None and u.find_spec('launcher')"
    subprocess.run([str(python), "-c", probe], check=True)
    return str(python)


def cached_checks(base: Path, project: Path, remote: SSHRemote) -> None:
    """train -> started with the checks cached (with and without the stack, a small task and the demo), and
    push of an unchanged task with data against a raw rsync (issue 17)."""
    bare = no_stack_python(base)
    tasks = project / "tasks"
    small = tasks / "small"  # builtin:tiny on a handful of rows
    shutil.copytree(tasks / "hr", small)
    for name, keep in (("train", 16), ("eval", 4), ("test", 4)):
        path = small / "data" / f"{name}.jsonl"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))
    bulk = tasks / "bulk"  # the demo's rows and 1,000 files of 100 KB
    shutil.copytree(tasks / "hr", bulk)
    (bulk / "assets").mkdir()
    for i in range(1000):
        (bulk / "assets" / f"part-{i:04}.bin").write_bytes(os.urandom(100_000))

    def gpurun(*args, python=None):
        if python is None:
            result = run_gpurun(project, *args)
        else:  # the launcher as the Python without the stack runs it
            argv, env = [python, "-m", "launcher.cli", *args], {**os.environ, "COLUMNS": "200"}
            result = subprocess.run(argv, cwd=project, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        return result

    runs: list[str] = []

    def train(task: str, lr: str, python=None) -> tuple[float, str]:
        start = time.perf_counter()
        result = gpurun("train", f"tasks/{task}", "--set", f"training.learning_rate={lr}", python=python)
        seconds = time.perf_counter() - start
        runs.append(re.search(r"started (\S+) on", result.stdout).group(1))
        cached = "cached" if "unchanged since the last check" in result.stdout else "checked"
        return seconds, cached

    rows = []
    for task, label in (("small", "builtin:tiny, 16+4 rows"), ("hr", "the demo, 400 rows")):
        for python, stack in ((None, "with the stack"), (bare, "without the stack")):
            first, said_first = train(task, "1e-3", python)  # the checks run (or their cache from before serves)
            warm, said = train(task, "2e-3", python)  # another learning rate: the same rows and tokens
            rows.append((f"train -> started, {label}, {stack}, first ({said_first})", first))
            rows.append((f"train -> started, {label}, {stack}, lr changed ({said})", warm))
            for run_id in runs:
                gpurun("stop", run_id, "--grace", "2")
            runs.clear()

    gpurun("push", "tasks/bulk")  # cold: the rows are checked and cached, every file sent
    push_unchanged = timed(lambda: gpurun("push", "tasks/bulk"), repeat=3)
    raw_argv = [
        "rsync",
        "-a",
        "--delete",
        "--mkpath",
        "-e",
        " ".join(remote.ssh_argv()),
        f"{bulk}/",
        f"{remote.host.ssh}:{base}/raw-bulk/",
    ]  # fmt: skip (the same ssh: gpurun's shared connection, as a push uses it)
    subprocess.run(raw_argv, check=True, capture_output=True)  # cold
    raw = timed(lambda: subprocess.run(raw_argv, check=True, capture_output=True), repeat=3)
    print(f"{'cached checks (issue 17)':74} {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:74} {seconds:8.3f}")
    print(f"{'raw rsync -a --delete, unchanged (1,000 files, 100 MB + the demo rows)':74} {raw:8.3f}")
    print(f"{'gpurun push, unchanged, same folder':74} {push_unchanged:8.3f}  ratio {push_unchanged / raw:.2f}")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")


def follow_latency(remote: SSHRemote, base: Path, samples: int = 20) -> float:
    """Append events to a live run's events.jsonl on the host; time until `follow` delivers each."""
    trainer_root = push_trainer(remote)
    run_dir = base / "host" / "runs" / "latency-probe"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": "latency-probe", "task": "x"}))
    sleeper = subprocess.Popen(["sleep", "600"])
    from trainer.host.processes import boot_id, process_marker

    pid_info = {"pgid": sleeper.pid, "pid": sleeper.pid, "marker": process_marker(sleeper.pid), "boot_id": boot_id()}
    (run_dir / "pid").write_text(json.dumps(pid_info))
    proc = remote.stream(trainer_command(remote, trainer_root, "follow", str(run_dir), "0", "0"))
    received: dict[int, float] = {}

    def reader():
        for line in proc.stdout:
            message = json.loads(line)
            for event in message.get("events", []):
                received[event["i"]] = time.perf_counter()

    threading.Thread(target=reader, daemon=True).start()
    time.sleep(1.0)  # let the follow process start
    sent = {}
    with (run_dir / "events.jsonl").open("a") as fh:
        for i in range(samples):
            sent[i] = time.perf_counter()
            fh.write(json.dumps({"kind": "log", "i": i}) + "\n")
            fh.flush()
            time.sleep(0.3)
    time.sleep(1.0)
    sleeper.kill()
    proc.kill()
    delays = [received[i] - sent[i] for i in sent if i in received]
    return statistics.median(delays) if delays else float("nan")


if __name__ == "__main__":
    main()
