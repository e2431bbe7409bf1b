"""Time each step of the loop over a real local sshd, as ratios against baselines from the same run.

    python bench/loop.py            (after `bash scripts/setup.sh`; uses .venv's gpurun if present)

Baselines: one bare `ssh host true` round trip on a new connection, and one bare rsync of the same
task directory. Steps: push (cold, then unchanged), train-to-running, status, follow latency (event
written on the host -> received by the laptop), pull; the repeatable ones both with a connection per
command (GPURUN_SSH_MUX=0) and through gpurun's shared connection. Nothing here asserts: read the
numbers, set targets.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

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
    finally:
        server.stop()


def follow_latency(remote: SSHRemote, base: Path, samples: int = 20) -> float:
    """Append events to a live run's events.jsonl on the host; time until `follow` delivers each."""
    trainer_root = push_trainer(remote)
    run_dir = base / "host" / "runs" / "latency-probe"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": "latency-probe", "task": "x"}))
    sleeper = subprocess.Popen(["sleep", "600"])
    from trainer.host.hostside import boot_id, process_marker

    pid_info = {"pgid": sleeper.pid, "pid": sleeper.pid, "marker": process_marker(sleeper.pid), "boot_id": boot_id()}
    (run_dir / "pid").write_text(json.dumps(pid_info))
    proc = remote.stream(remote.python_argv(trainer_root, "follow", str(run_dir), "0", "0"))
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
