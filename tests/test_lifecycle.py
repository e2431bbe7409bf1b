"""Runs that survive everything, state that never lies: faults injected against the real test sshd.

(The stop-then-resume test lives in tests/test_resume.py.)"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from launcher.runs import History
from tests.conftest import gpurun_argv, run_gpurun


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def latest_run_id(project: Path) -> str:
    return History(project).get(None).run_id


def host_events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_step(run_dir: Path) -> int:
    steps = [e.get("step", 0) for e in host_events(run_dir) if e["kind"] == "log"]
    return max(steps, default=0)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def trainer_pid(run_dir: Path) -> int:
    wrapper = wait_for(lambda: (run_dir / "pid").exists() and json.loads((run_dir / "pid").read_text()), what="pid")
    return wait_for(lambda: children_of(wrapper["pid"]), what="trainer process")[0]


def start_long_run(project: Path, *extra: str, steps: int = 400) -> tuple[str, Path]:
    result = run_gpurun(project, "train", "tasks/hr", "--host", "a100", "--set", f"training.max_steps={steps}", *extra)
    assert result.returncode == 0, result.stderr
    run_id = latest_run_id(project)
    return run_id, result


def status_of(project: Path, run_id: str) -> str:
    result = run_gpurun(project, "status", run_id)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kill_9_of_the_trainer_is_failed_137(ssh_project, host_workdir):
    run_id, _ = start_long_run(ssh_project)
    run_dir = host_workdir / "runs" / run_id
    os.kill(trainer_pid(run_dir), signal.SIGKILL)
    wait_for(lambda: (run_dir / "exit_code").exists(), what="exit_code")
    assert "failed (137)" in status_of(ssh_project, run_id)
    assert run_gpurun(ssh_project, "logs", "-f", run_id).returncode == 137


def test_wrapper_and_trainer_killed_is_lost(ssh_project, host_workdir):
    run_id, _ = start_long_run(ssh_project)
    run_dir = host_workdir / "runs" / run_id
    trainer_pid(run_dir)
    os.killpg(json.loads((run_dir / "pid").read_text())["pgid"], signal.SIGKILL)
    wait_for(lambda: "lost" in status_of(ssh_project, run_id), timeout=20, what="lost")
    assert not (run_dir / "exit_code").exists()
    assert run_gpurun(ssh_project, "logs", "-f", run_id).returncode == 125


def final_loss(run_dir: Path, step: int) -> float:
    losses = [e["loss"] for e in host_events(run_dir) if e["kind"] == "log" and e.get("step") == step and "loss" in e]
    assert losses, f"no loss logged at step {step}"
    return losses[-1]


def kill_sshd_and_sessions(sshd) -> None:
    """Kill the listener and every session it forked: every connection drops at once."""
    listener = sshd.proc.pid
    sessions = [pid for child in children_of(listener) for pid in (child, *children_of(child))]
    os.kill(listener, signal.SIGKILL)
    sshd.proc.wait()
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # a session that ended on its own (its child was killed first) is just as gone


def test_follow_survives_killed_connections_and_a_restarted_sshd(ssh_project, host_workdir, sshd):
    # Steps only: an eval and a checkpoint every 3 steps (conftest's) would triple the run's time on busy cores.
    quiet = ["--set", "training.eval_steps=1000", "--set", "training.save_steps=1000"]
    run_id, _ = start_long_run(ssh_project, "--set", "training.logging_steps=1", *quiet, steps=80)
    run_dir = host_workdir / "runs" / run_id
    env = {**os.environ, "COLUMNS": "200"}
    follower = subprocess.Popen(
        [*gpurun_argv(), "logs", "-f"], cwd=ssh_project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        wait_for(lambda: last_step(run_dir) >= 3, what="step 3")
        kill_sshd_and_sessions(sshd)
        stepped_at = last_step(run_dir)
        wait_for(lambda: last_step(run_dir) > stepped_at, what="a step with no connection")  # the job goes on
    finally:
        sshd.start()
    out, _ = follower.communicate(timeout=300)
    text = out.decode()
    assert follower.returncode == 0, text
    assert "reconnecting" in text
    assert (run_dir / "exit_code").read_text().strip() == "0"
    for step in range(1, 81):
        assert text.count(f"[log] step {step}/80 ") == 1, f"step {step} shown {text.count(f'[log] step {step}/80 ')}x"
