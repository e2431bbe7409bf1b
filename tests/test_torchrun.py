"""Several processes on one host run under PyTorch's own launcher (torchrun's elastic agent), and gpurun's promises
hold there: every rank trains in step with the others, stop saves one checkpoint and resume continues it exactly, a
killed worker fails the run with its own exit code and last lines, nothing is left running. The fake nvidia-smi
announces two GPUs; the processes train on the CPU over gloo, the same code path as CUDA."""

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from launcher.runs import History
from tests.conftest import run_gpurun
from tests.test_gpus_and_secrets import TWO_FREE, fake_gpus
from tests.test_lifecycle import children_of, final_loss, host_events, last_step, latest_run_id, status_of, wait_for
from tests.test_multi_gpu import rank_pid
from trainer.checkpoints import COMPLETE_MARKER
from trainer.training.run import DIGEST_ENV


def two_gpu_project(project: Path, tmp_path: Path) -> None:
    fake_gpus(project, tmp_path, TWO_FREE)
    hosts = yaml.safe_load((project / "hosts.yaml").read_text())
    hosts["hosts"]["a100"]["env"][DIGEST_ENV] = "1"  # each rank records a hash of the LoRA weights it ends with
    (project / "hosts.yaml").write_text(yaml.safe_dump(hosts))


def train_two(project: Path, *extra: str) -> tuple[str, Path]:
    started = run_gpurun(project, "train", "tasks/hr", "--host", "a100", "--gpus", "0,1", *extra)
    assert started.returncode == 0, started.stderr
    assert "GPUs: 0,1" in started.stdout
    return latest_run_id(project)


def processes_of(run_dir: Path) -> list[str]:
    """Every live process on this machine whose command line names the run's directory (the host is this machine)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(run_dir).encode() in cmdline and state != "Z":
                found.append(entry.name + ": " + cmdline.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found


def test_two_processes_run_under_torchrun_every_rank_reports_and_they_end_with_the_same_weights(
    ssh_project, host_workdir, tmp_path
):
    two_gpu_project(ssh_project, tmp_path)
    run_id = train_two(ssh_project)
    run_dir = host_workdir / "runs" / run_id
    follow = run_gpurun(ssh_project, "logs", "-f", timeout=900)
    assert follow.returncode == 0, follow.stdout[-3000:] + (run_dir / "train.rank1.log").read_text()[-3000:]

    log, rank1_log = (run_dir / "train.log").read_text(), (run_dir / "train.rank1.log").read_text()
    assert "process: rank 0 of 2 (local rank 0)" in log and "process: rank 1 of 2 (local rank 1)" in rank1_log
    assert "rank 1 of 2" not in log and "rank 0 of 2" not in rank1_log  # each rank's lines in its own log
    assert (run_dir / "torchelastic").is_dir()  # torchrun's agent started them (its error-file folder)
    assert host_events(run_dir)[0]["processes"] == 2
    digests = [(run_dir / f"trained_digest.rank{rank}").read_text() for rank in (0, 1)]
    assert len(digests[0]) == 65 and digests[0] == digests[1]  # the gradients were averaged: one model, twice
    assert "saved adapter to" in log and "saved adapter to" not in rank1_log  # rank 0 alone writes the adapter
    assert (run_dir / "output" / "adapter_model.safetensors").exists()
    # train.log stays for people: no torchrun banner, prefixes or agent chatter in it.
    for noise in ("OMP_NUM_THREADS", "[default0]", "torch.distributed.elastic", "*****"):
        assert noise not in log, noise
    assert processes_of(run_dir) == []


def test_stop_under_torchrun_saves_one_checkpoint_and_resume_reaches_the_uninterrupted_runs_loss(
    ssh_project, host_workdir, tmp_path
):
    two_gpu_project(ssh_project, tmp_path)
    total = 16
    steps = ["--set", f"training.max_steps={total}", "--set", "training.logging_steps=1"]
    steps += ["--set", "training.save_steps=4", "--set", "training.eval_steps=100"]
    reference_id = train_two(ssh_project, *steps)
    assert run_gpurun(ssh_project, "logs", "-f", reference_id, timeout=1800).returncode == 0
    reference = final_loss(host_workdir / "runs" / reference_id, total)

    run_id = train_two(ssh_project, *steps)
    run_dir = host_workdir / "runs" / run_id
    wait_for(lambda: last_step(run_dir) >= 5, timeout=600, what="step 5")
    stop = run_gpurun(ssh_project, "stop", run_id, "--grace", "120")
    assert stop.returncode == 0 and f"{run_id}: stopped" in stop.stdout, stop.stdout + stop.stderr
    stopped = [e for e in host_events(run_dir) if e["kind"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] < total, stopped
    assert (run_dir / "output" / stopped[0]["checkpoint"] / COMPLETE_MARKER).exists()
    # Each rank stopped at the same step with the same weights, and neither was killed.
    assert (run_dir / "trained_digest.rank0").read_text() == (run_dir / "trained_digest.rank1").read_text()
    assert [json.loads((run_dir / name).read_text())["code"] for name in ("trainer_exit", "trainer_exit.rank1")] == [
        143,
        143,
    ]
    assert processes_of(run_dir) == []

    resumed = run_gpurun(ssh_project, "train", "--resume", run_id)  # as many GPUs as its parent: no --gpus
    assert resumed.returncode == 0, resumed.stderr
    new_dir = host_workdir / "runs" / latest_run_id(ssh_project)
    assert run_gpurun(ssh_project, "logs", "-f", new_dir.name, timeout=1800).returncode == 0
    assert host_events(new_dir)[0]["processes"] == 2
    assert last_step(new_dir) == total
    assert final_loss(new_dir, total) == pytest.approx(reference, rel=1e-4)


def test_a_worker_killed_by_sigkill_fails_the_run_with_137_and_its_last_lines_and_leaves_no_process(
    ssh_project, host_workdir, tmp_path
):
    two_gpu_project(ssh_project, tmp_path)
    run_id = train_two(ssh_project, "--set", "training.max_steps=400")
    run_dir = host_workdir / "runs" / run_id
    wait_for(lambda: last_step(run_dir) >= 2, timeout=600, what="step 2")
    last_line = (run_dir / "train.rank1.log").read_text().splitlines()[-1]
    os.kill(rank_pid(run_dir, 1), signal.SIGKILL)
    # Its peer waits for it in the next collective: torchrun ends it, and the run says which rank failed and how.
    follow = run_gpurun(ssh_project, "logs", "-f", timeout=120)
    assert follow.returncode == 137, follow.stdout[-2000:]
    log = (run_dir / "train.log").read_text()
    assert "error: rank 1 exited with 137; the end of train.rank1.log:" in log, log[-3000:]
    assert f"  {last_line}\n" in log.split("error: rank 1 exited with 137")[1]
    assert "failed (137)" in status_of(ssh_project, run_id)
    wait_for(lambda: not processes_of(run_dir), timeout=30, what="no process of the run left")


def test_workers_left_behind_by_a_killed_wrapper_and_torchrun_are_running_and_stop_saves_them(
    ssh_project, host_workdir, tmp_path
):
    two_gpu_project(ssh_project, tmp_path)
    run_id = train_two(ssh_project, "--set", "training.max_steps=400", "--set", "training.logging_steps=1")
    run_dir = host_workdir / "runs" / run_id
    wait_for(lambda: last_step(run_dir) >= 2, timeout=600, what="step 2")
    # The wrapper's whole process group (the wrapper and torchrun's agent) dies; the workers, in sessions of their
    # own, train on: the run is running, not lost, and a stop reaches them.
    os.killpg(json.loads((run_dir / "pid").read_text())["pgid"], signal.SIGKILL)
    assert rank_pid(run_dir, 0) and rank_pid(run_dir, 1)
    assert "running" in status_of(ssh_project, run_id)
    stop = run_gpurun(ssh_project, "stop", run_id, "--grace", "120")
    assert stop.returncode == 0 and f"{run_id}: stopped" in stop.stdout, stop.stdout + stop.stderr
    stopped = [e for e in host_events(run_dir) if e["kind"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["checkpoint"], stopped  # rank 0 saved, then said so itself
    assert (run_dir / "output" / stopped[0]["checkpoint"] / COMPLETE_MARKER).exists()
    assert processes_of(run_dir) == []
    assert run_gpurun(ssh_project, "logs", "-f", run_id).returncode == 130
    assert History(ssh_project).get(run_id).state == "stopped"


def test_torchruns_agent_killed_alone_leaves_a_running_run_that_stop_ends_with_a_checkpoint(
    ssh_project, host_workdir, tmp_path
):
    two_gpu_project(ssh_project, tmp_path)
    run_id = train_two(ssh_project, "--set", "training.max_steps=400", "--set", "training.logging_steps=1")
    run_dir = host_workdir / "runs" / run_id
    wait_for(lambda: last_step(run_dir) >= 2, timeout=600, what="step 2")
    wrapper = json.loads((run_dir / "pid").read_text())["pid"]
    (agent,) = children_of(wrapper)
    os.kill(agent, signal.SIGKILL)
    # Its workers train on in their own sessions: the wrapper does not call the run over while they do.
    step = last_step(run_dir)
    wait_for(lambda: last_step(run_dir) > step, timeout=120, what="a step after the agent died")
    assert not (run_dir / "exit_code").exists() and "running" in status_of(ssh_project, run_id)
    stop = run_gpurun(ssh_project, "stop", run_id, "--grace", "120")
    assert stop.returncode == 0 and f"{run_id}: stopped" in stop.stdout, stop.stdout + stop.stderr
    stopped = [e for e in host_events(run_dir) if e["kind"] == "stopped"]
    assert len(stopped) == 1 and (run_dir / "output" / stopped[0]["checkpoint"] / COMPLETE_MARKER).exists()
    assert (run_dir / "exit_code").read_text() == "143\n"  # the wrapper's record, from the workers' own word
    assert processes_of(run_dir) == []


def test_the_failure_named_is_the_cause_not_torchruns_sigterm_to_the_peers():
    from types import SimpleNamespace

    from trainer.host.torchrun import first_failure

    def failure(code: int, at: float):
        return SimpleNamespace(exitcode=code, timestamp=at)

    # Rank 1 was killed (-9); torchrun then sent SIGTERM to rank 0, whose error file can carry an earlier time.
    assert first_failure({0: failure(-signal.SIGTERM, 10.0), 1: failure(-signal.SIGKILL, 11.0)})[0] == 1
    # Rank 1 raised (exit 1); rank 0 was terminated by torchrun because of it.
    assert first_failure({0: failure(-signal.SIGTERM, 10.0), 1: failure(1, 11.0)})[0] == 1
    # Two exits: the earliest.
    assert first_failure({0: failure(1, 12.0), 1: failure(1, 11.0)})[0] == 1
