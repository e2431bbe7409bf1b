"""State that never lies at the worst moments: the wrapper killed alone, a stop while the run is still starting,
a disk that fills mid-run, and a run whose checkpoints cannot fit. Real sshd, real training, real tmpfs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_gpurun
from tests.test_lifecycle import host_events, last_step, start_long_run, status_of, trainer_pid, wait_for
from trainer.host.checkpoint_size import checkpoint_bytes_needed, checkpoints_kept, trained_parameters
from trainer.task.loading import config_to_dict, load_task


def pid_info(run_dir: Path) -> dict:
    return json.loads((run_dir / "pid").read_text())


def is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def kill_wrapper_alone(run_dir: Path) -> int:
    """SIGKILL the detached wrapper only, once its trainer is up; returns the trainer's pid."""
    trainer = trainer_pid(run_dir)
    wrapper = pid_info(run_dir)["pid"]
    os.kill(wrapper, signal.SIGKILL)
    wait_for(lambda: not is_running(wrapper), timeout=20, what="the wrapper to die")
    assert is_running(trainer), "the trainer must outlive its wrapper"
    return trainer


def test_wrapper_killed_alone_the_run_is_running_then_succeeded_from_the_trainers_own_record(ssh_project, host_workdir):
    run_id, _ = start_long_run(ssh_project, steps=30)
    run_dir = host_workdir / "runs" / run_id
    trainer = kill_wrapper_alone(run_dir)
    assert "running" in status_of(ssh_project, run_id)  # before this fix: lost, while it trained on

    follow = run_gpurun(ssh_project, "logs", "-f", run_id, timeout=900)
    assert follow.returncode == 0, follow.stdout[-2000:] + follow.stderr
    assert not is_running(trainer)
    assert not (run_dir / "exit_code").exists()  # no wrapper was left to write it: the trainer's word decides
    assert json.loads((run_dir / "trainer_exit").read_text())["code"] == 0
    assert "succeeded" in status_of(ssh_project, run_id)
    assert (run_dir / "output" / "adapter_model.safetensors").exists()


def test_wrapper_then_trainer_killed_is_lost_because_nothing_says_how_it_ended(ssh_project, host_workdir):
    # The trainer killed by -9 writes no record and no wrapper is left to reap its 137: `lost`, not a guess.
    run_id, _ = start_long_run(ssh_project)
    run_dir = host_workdir / "runs" / run_id
    trainer = kill_wrapper_alone(run_dir)
    os.kill(trainer, signal.SIGKILL)
    wait_for(lambda: "lost" in status_of(ssh_project, run_id), timeout=30, what="lost")
    assert run_gpurun(ssh_project, "logs", "-f", run_id).returncode == 125


def test_stop_after_the_wrapper_died_stops_the_trainer_it_left_with_a_checkpoint(ssh_project, host_workdir):
    run_id, _ = start_long_run(ssh_project, "--set", "training.logging_steps=1")
    run_dir = host_workdir / "runs" / run_id
    trainer = kill_wrapper_alone(run_dir)
    wait_for(lambda: last_step(run_dir) >= 2, what="step 2")
    stop = run_gpurun(ssh_project, "stop", run_id, "--grace", "60")
    assert stop.returncode == 0 and f"{run_id}: stopped" in stop.stdout, stop.stdout + stop.stderr
    assert not is_running(trainer)
    stopped = [e for e in host_events(run_dir) if e["kind"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["checkpoint"], stopped  # the trainer saved, then said so itself
    assert run_gpurun(ssh_project, "logs", "-f", run_id).returncode == 130


def test_stop_right_after_train_is_stopped_with_its_stopped_event(ssh_project, host_workdir):
    run_id, _ = start_long_run(ssh_project)
    stop = run_gpurun(ssh_project, "stop", run_id, "--grace", "60")
    assert stop.returncode == 0 and f"{run_id}: stopped" in stop.stdout, stop.stdout + stop.stderr
    run_dir = host_workdir / "runs" / run_id
    assert [e["kind"] for e in host_events(run_dir)].count("stopped") == 1
    assert "stopped" in status_of(ssh_project, run_id)
    assert run_gpurun(ssh_project, "logs", "-f", run_id).returncode == 130


def host_command(workdir: Path, *args: str, payload: dict | None = None) -> dict:
    """`python -m trainer ARGS` as the launcher runs it on a host, here on this machine; its JSON reply."""
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        input=json.dumps(payload) if payload is not None else None,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pause", [0.0, 0.4, 1.0, 3.0])
def test_a_stop_at_any_moment_of_the_start_ends_stopped_with_one_stopped_event(local_project, tmp_path, pause):
    # Before the wrapper can catch SIGTERM, before it starts the trainer, before the trainer can catch it:
    # the pauses only spread the stop over those moments; every one must end the same way.
    workdir = tmp_path / "workdir"
    shutil.copytree(local_project / "tasks" / "demo", workdir / "tasks" / "demo")
    config = config_to_dict(load_task(workdir / "tasks" / "demo", ["training.max_steps=400"]))
    run_dir = workdir / "runs" / f"demo-stop-{int(pause * 10)}"
    run = {"run_id": run_dir.name, "task": "demo", "config": config, "gpus": None, "started_at": time.time()}
    started = host_command(workdir, "start", str(run_dir), payload={"run": run, "env": {}})
    assert started["state"] == "running", started
    time.sleep(pause)
    stopped = host_command(workdir, "stop", str(run_dir), "60")
    assert stopped["state"] == "stopped", (stopped, (run_dir / "train.log").read_text()[-2000:])
    assert [e["kind"] for e in host_events(run_dir)].count("stopped") == 1
    assert not (run_dir / ".reserve").exists()


# ---------------------------------------------------------------- disk space


@pytest.fixture
def small_disk(host_workdir):
    """The ssh host's workdir on its own 40 MB tmpfs (needs root, as in CI)."""
    host_workdir.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(host_workdir)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    yield host_workdir
    if subprocess.run(["umount", str(host_workdir)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(host_workdir)], check=True)  # a process still in it: detach now


def fill(path: Path) -> None:
    """Write zeros until the filesystem is full."""
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(bytes(1 << 20))
                fh.flush()
        except OSError:
            pass
        try:  # what the buffer still held, a page at a time, to the last byte
            while True:
                os.write(fh.fileno(), bytes(4096))
        except OSError:
            pass


def test_disk_full_mid_run_is_failed_with_no_space_left_and_the_path(ssh_project, small_disk):
    run_id, _ = start_long_run(ssh_project, "--set", "training.logging_steps=1")
    run_dir = small_disk / "runs" / run_id
    wait_for(lambda: last_step(run_dir) >= 3, what="step 3")
    fill(small_disk / "filler")
    follow = run_gpurun(ssh_project, "logs", "-f", run_id, timeout=120)
    assert follow.returncode == 1, follow.stdout[-2000:]
    assert "failed (1)" in status_of(ssh_project, run_id)
    assert (run_dir / "exit_code").read_text().strip() == "1"
    log = (run_dir / "train.log").read_text()
    assert f"error: no space left on device: could not write {run_dir}" in log or (
        f"error: no space left on device: could not write {small_disk}" in log
    ), log[-2000:]
    assert f"free in {small_disk})" in log
    errors = [e for e in host_events(run_dir) if e["kind"] == "error"]
    assert len(errors) == 1 and errors[0]["message"].startswith("no space left on device"), errors
    assert "no space left on device" in follow.stdout


def test_train_refuses_a_run_whose_checkpoints_cannot_fit_naming_both_sizes(ssh_project, small_disk, model_cache):
    from trainer.builtin.tiny import ensure_tiny

    ensure_tiny(model_cache / "models")  # the estimate reads the base model's config.json where the host has it
    # r=2048 on builtin:tiny: 4.2M trained parameters, about 50 MB per checkpoint with Adam's two moments.
    result = run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100", "--set", "lora.r=2048")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Error: on a100: not enough free space in {small_disk}: " in result.stderr, result.stderr
    assert " MB free, the run's checkpoints need about " in result.stderr
    assert "Hint: free some space, lower training.save_total_limit, or use another workdir" in result.stderr
    assert not (small_disk / "runs").exists() or not any((small_disk / "runs").iterdir())
    # The same run with a rank that fits starts (and is stopped: the test needs no more of it).
    assert run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100").returncode == 0
    assert run_gpurun(ssh_project, "stop", "--grace", "60").returncode == 0


def test_the_checkpoint_estimate_counts_what_peft_trains_and_bounds_what_is_written(local_project, model_cache):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.builtin.tiny import ensure_tiny

    base = ensure_tiny(model_cache / "models")
    model_cfg = json.loads((base / "config.json").read_text())
    for targets in (["q_proj", "v_proj"], ["all-linear"]):
        peft_model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=8, target_modules="all-linear" if targets == ["all-linear"] else targets),
        )
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert trained_parameters({"lora": {"r": 8, "target_modules": targets}}, model_cfg) == trainable

    assert checkpoints_kept({"max_steps": 6, "save_steps": 3, "save_total_limit": 5}) == 2
    assert checkpoints_kept({"max_steps": 100, "save_steps": 10, "save_total_limit": 3}) == 3
    assert checkpoints_kept({"save_strategy": "no"}) == 0
    assert checkpoints_kept({"max_steps": -1, "save_total_limit": None}) is None  # epochs, no limit: unknown

    # A real run: what it wrote (checkpoints and the final adapter) is within the estimate, and not far below it.
    assert run_gpurun(local_project, "train", "tasks/demo").returncode == 0
    assert run_gpurun(local_project, "logs", "-f").returncode == 0
    workdir = local_project.parent / "local-workdir"
    (run_dir,) = (workdir / "runs").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    output = run_dir / "output"
    written = sum(
        f.stat().st_size for f in output.rglob("*") if f.is_file() and f.relative_to(output).parts[0] != "runs"
    )
    estimate = checkpoint_bytes_needed(record["config"], workdir, {"GPURUN_CACHE": str(model_cache)})
    assert written <= estimate <= 2 * written, (written, estimate)
