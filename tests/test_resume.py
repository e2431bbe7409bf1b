"""Resume resumes (the parent's whole config, its schedule kept), and a start the laptop never heard
back from is never a run the laptop does not know about. Real sshd, real trainer, real rsync."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from launcher.render import Dashboard, StepRate
from launcher.runs import History
from tests.conftest import gpurun_argv, run_gpurun
from tests.test_gpus_and_secrets import TWO_FREE, fake_gpus
from tests.test_lifecycle import (
    children_of,
    final_loss,
    host_events,
    last_step,
    latest_run_id,
    start_long_run,
    trainer_pid,
    wait_for,
)
from trainer.checkpoints import COMPLETE_MARKER


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_stop_checkpoints_and_resume_matches_the_uninterrupted_run(ssh_project, host_workdir):
    steps = ["--set", "training.logging_steps=1", "--set", "training.save_steps=4", "--set", "training.eval_steps=100"]
    total = 24
    # The reference: the same run, never interrupted.
    ref_id, _ = start_long_run(ssh_project, *steps, steps=total)
    assert run_gpurun(ssh_project, "logs", "-f", ref_id, timeout=1800).returncode == 0
    reference = final_loss(host_workdir / "runs" / ref_id, total)

    run_id, _ = start_long_run(ssh_project, *steps, steps=total)
    run_dir = host_workdir / "runs" / run_id
    wait_for(lambda: last_step(run_dir) >= 6, what="step 6")
    stop = run_gpurun(ssh_project, "stop", run_id, "--grace", "60")
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    stopped_at = [e for e in host_events(run_dir) if e["kind"] == "stopped"][-1]
    assert stopped_at["step"] < total, "stopped too late to test a resume"
    checkpoint = run_dir / "output" / stopped_at["checkpoint"]
    assert (checkpoint / COMPLETE_MARKER).exists()
    # A half-written checkpoint with a higher step must never be picked.
    (run_dir / "output" / "checkpoint-9999").mkdir()
    (run_dir / "output" / "checkpoint-9999" / "trainer_state.json").write_text("{")
    runs_before = sorted(p.name for p in (host_workdir / "runs").iterdir())

    # Schedule-shape changes are refused, naming the key and both values, before anything starts.
    for setting, shown in (
        ("training.per_device_train_batch_size=2", "per_device_train_batch_size: 1 → 2"),
        ("training.max_steps=20", f"max_steps: {total} → 20"),
        ("training.lr_scheduler_type=linear", "lr_scheduler_type: 'cosine' → 'linear'"),
    ):
        refused = run_gpurun(ssh_project, "train", "--resume", run_id, "--set", setting)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "Error: --set would change the schedule" in refused.stderr and shown in refused.stderr, refused.stderr
        assert "Hint:" in refused.stderr and "--force" in refused.stderr
    assert sorted(p.name for p in (host_workdir / "runs").iterdir()) == runs_before

    # No --set again: the resumed run inherits the parent's whole resolved config.
    resumed = run_gpurun(ssh_project, "train", "--resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_id}" in resumed.stdout
    assert f"from {checkpoint.name} (step {stopped_at['checkpoint'].split('-')[1]}/{total})" in resumed.stdout
    assert f"--set training.max_steps={total}" in resumed.stdout  # what it inherited, shown
    new_id = latest_run_id(ssh_project)
    assert History(ssh_project).get(new_id).parent == run_id
    new_dir = host_workdir / "runs" / new_id
    assert run_json(new_dir)["config"] == run_json(run_dir)["config"]
    assert run_json(new_dir)["overrides"] == run_json(run_dir)["overrides"]
    assert run_gpurun(ssh_project, "logs", "-f", new_id, timeout=1800).returncode == 0
    assert f"resuming from {checkpoint}" in (new_dir / "train.log").read_text()
    assert last_step(new_dir) == total
    assert final_loss(new_dir, total) == pytest.approx(reference, rel=1e-4)

    # A --set that leaves the schedule alone applies on top, and is shown with the value it replaces.
    again = run_gpurun(ssh_project, "train", "--resume", run_id, "--set", "samples=2")
    assert again.returncode == 0, again.stderr
    assert "--set samples: 1 → 2" in again.stdout, again.stdout
    later_id = latest_run_id(ssh_project)
    later = run_json(host_workdir / "runs" / later_id)
    assert later["config"] == {**run_json(run_dir)["config"], "samples": 2}
    assert later["resume_overrides"] == ["samples=2"]
    assert run_gpurun(ssh_project, "stop", later_id, "--grace", "60").returncode == 0


def test_resume_of_a_run_without_a_complete_checkpoint_is_refused_before_anything_starts(ssh_project, host_workdir):
    run_id, _ = start_long_run(ssh_project, "--set", "training.save_steps=1000")
    run_dir = host_workdir / "runs" / run_id
    trainer = trainer_pid(run_dir)

    running = run_gpurun(ssh_project, "train", "--resume", run_id)
    assert running.returncode == 1
    assert f"Error: {run_id} is still running" in running.stderr and f"gpurun stop {run_id}" in running.stderr

    os.kill(trainer, signal.SIGKILL)  # dies before its first save: nothing to resume from
    wait_for(lambda: (run_dir / "exit_code").exists(), what="exit_code")
    runs_before = sorted(p.name for p in (host_workdir / "runs").iterdir())
    refused = run_gpurun(ssh_project, "train", "--resume", run_id)
    assert refused.returncode == 1
    assert f"Error: {run_id} has no complete checkpoint to resume from" in refused.stderr, refused.stderr
    assert "Hint: it ended before its first save (save_steps: 1000)" in refused.stderr
    assert sorted(p.name for p in (host_workdir / "runs").iterdir()) == runs_before
    assert [r.run_id for r in History(ssh_project).all()] == [run_id]


def test_a_resumed_runs_first_screen_shows_its_step_and_an_eta_from_its_own_steps():
    console = Console(record=True, width=200, force_terminal=False)
    dashboard = Dashboard(console, "hr-resumed", quiet_log=True)
    dashboard.seed(24, 40)  # what `train --resume` recorded: the checkpoint's step and the total
    console.print(dashboard._view())
    assert "step 24/40" in console.export_text()

    # The trainer's events on the host's clock: begin at step 24 at t=1000, then one step per 2 s.
    dashboard.events([{"t": 1000.0, "kind": "train_begin", "step": 24, "total_steps": 40}])
    dashboard.events([{"t": 1000.0 + 2 * i, "kind": "log", "step": 24 + i, "total_steps": 40} for i in (1, 2)])
    rate = dashboard.eta
    assert rate.seconds_left(now=rate.received) == pytest.approx(14 * 2.0)  # 14 steps left, not 16 or 40
    console.print(dashboard._view())
    assert "step 26/40" in console.export_text()


def test_eta_counts_only_the_steps_timed_since_the_trainer_began():
    rate = StepRate()
    rate.feed({"t": 50.0, "kind": "log", "step": 10, "total_steps": 100})  # a previous stepping, before a restart
    rate.feed({"t": 100.0, "kind": "train_begin", "step": 10, "total_steps": 100})
    assert rate.seconds_left() is None  # no step of its own yet: no made-up ETA
    rate.feed({"t": 110.0, "kind": "log", "step": 20, "total_steps": 100})
    assert rate.seconds_left(now=rate.received) == pytest.approx(80.0)
    assert rate.seconds_left(now=rate.received + 30) == pytest.approx(50.0)


# ---------------------------------------------------------------- a connection that drops during start

BLOCKING_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu*)
    touch "$FAKE_SMI_DIR/started"
    while [ ! -e "$FAKE_SMI_DIR/release" ]; do sleep 0.05; done
    cat "$FAKE_SMI_DIR/gpus.csv" ;;
  *--query-compute-apps*) cat "$FAKE_SMI_DIR/apps.csv" ;;
esac
"""


def start_and_drop(project: Path, tmp_path: Path, steps: int, host_finishes: bool = False):
    """`gpurun train --gpus auto` whose host-side start is held in nvidia-smi while gpurun's ssh client dies.

    sshd ends a session's command when its client goes, so a start cut off mid-way dies with it
    (`host_finishes=False`). The other worst case, a start that did everything but whose reply never
    arrived: the client is frozen first, the host's start finishes and answers into the void, then
    the client dies (`host_finishes=True`).
    """
    smi = fake_gpus(project, tmp_path, TWO_FREE)
    (smi / "nvidia-smi").write_text(BLOCKING_SMI)
    argv = [*gpurun_argv(), "train", "tasks/hr", "--host", "a100", "--gpus", "auto"]
    argv += ["--set", f"training.max_steps={steps}"]
    # A shared connection's master, not the client, writes the reply into gpurun's pipes: freezing the
    # client holds the reply back only when the client has its own connection.
    env = {**os.environ, "GPURUN_SSH_MUX": "0"} if host_finishes else None
    train = subprocess.Popen(argv, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(lambda: (smi / "started").exists() or train.poll() is not None, 300, "the host's start in nvidia-smi")
    assert train.poll() is None, train.communicate()
    clients = [pid for pid in children_of(train.pid) if Path(f"/proc/{pid}/comm").read_text().strip() == "ssh"]
    assert clients, "gpurun has no ssh child during the start"
    if host_finishes:
        for pid in clients:
            os.kill(pid, signal.SIGSTOP)
        (smi / "release").touch()
        run_id = wait_for(lambda: History(project).get(None).run_id, what="the run's record")
        wait_for(lambda: not host_processes_mentioning(" start ", f"runs/{run_id}"), what="the start to end")
    for pid in clients:
        os.kill(pid, signal.SIGKILL)
    out, err = train.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, train.returncode, out, err), smi


def host_processes_mentioning(*texts: str) -> list[int]:
    """Host processes (the host is this machine) whose command line holds every one of texts."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                client = (entry / "comm").read_text().strip() == "ssh"  # the laptop's side of the call
            except OSError:
                continue
            if not client and all(text.encode() in cmdline for text in texts):
                found.append(int(entry.name))
    return found


def test_a_start_cut_off_before_the_run_began_is_known_never_to_start(ssh_project, host_workdir, tmp_path):
    train, smi = start_and_drop(ssh_project, tmp_path, steps=400)
    run_id = latest_run_id(ssh_project)
    assert train.returncode == 1
    assert f"Error: no answer from a100 while starting {run_id}" in train.stderr, train.stderr
    assert f"Hint: `gpurun status {run_id}` finds out" in train.stderr
    assert History(ssh_project).get(run_id).state == "starting"

    status = run_gpurun(ssh_project, "status", run_id)  # the host's start is still stuck in nvidia-smi
    assert status.returncode == 0, status.stderr
    assert "not_started" in status.stdout

    (smi / "release").touch()  # the stuck start goes on now, and must not begin the run
    wait_for(lambda: not host_processes_mentioning(run_id), what="the host's start to end")
    assert not (host_workdir / "runs" / run_id / "run.json").exists()
    assert not (host_workdir / "runs" / run_id / "pid").exists()
    assert "not_started" in run_gpurun(ssh_project, "runs").stdout
    logs = run_gpurun(ssh_project, "logs", run_id)
    assert logs.returncode == 1 and f"Error: {run_id} never started on a100" in logs.stderr, logs.stderr


def test_a_start_cut_off_after_the_run_began_is_found_and_trains_to_the_end(ssh_project, host_workdir, tmp_path):
    train, _ = start_and_drop(ssh_project, tmp_path, steps=6, host_finishes=True)
    run_id = latest_run_id(ssh_project)
    assert train.returncode == 1 and f"no answer from a100 while starting {run_id}" in train.stderr, train.stderr
    assert (host_workdir / "runs" / run_id / "pid").exists()  # it began; the laptop only missed the reply
    status = run_gpurun(ssh_project, "status", run_id)
    assert status.returncode == 0 and History(ssh_project).get(run_id).state in ("running", "succeeded"), status
    assert run_gpurun(ssh_project, "logs", "-f", run_id).returncode == 0
    assert "succeeded" in run_gpurun(ssh_project, "runs").stdout


def test_a_resumed_run_takes_as_many_gpus_as_its_parent_unless_told():
    """The global batch is per-device batch x processes: a 2-GPU run resumed on 1 would train another schedule."""
    from launcher.resume import resume_gpus

    assert resume_gpus({"gpus": "0,1"}) == "2"
    assert resume_gpus({"gpus": "3,5,6"}) == "3"
    assert resume_gpus({"gpus": "2"}) is None  # one GPU: the host's default picks one too
    assert resume_gpus({"gpus": None}) is None and resume_gpus({}) is None  # the CPU, or a Slurm job
