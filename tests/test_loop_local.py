"""The embedded `local` host runs the same loop without SSH: the newcomer's path, and the demo's."""

import json

from tests.conftest import run_gpurun
from tests.test_lifecycle import wait_for
from tests.test_loop_ssh import latest_run_dir, load_and_generate


def test_local_host_runs_the_whole_loop(local_project):
    assert run_gpurun(local_project, "push", "tasks/demo").returncode == 0
    train = run_gpurun(local_project, "train")  # the task pushed last, on the default host
    assert train.returncode == 0, train.stderr
    logs = run_gpurun(local_project, "logs", "-f")
    assert logs.returncode == 0, logs.stdout + logs.stderr
    # The memory pre-flight, before the weights load: its breakdown and the CPU's total (tests/test_memory_estimate.py
    # holds the formula against the profiler).
    assert "memory: weights " in logs.stdout and "per process (estimate; CPU)" in logs.stdout, logs.stdout
    assert logs.stdout.index("memory: weights") < logs.stdout.index("[log] step 1/")
    pull = run_gpurun(local_project, "pull")
    assert pull.returncode == 0, pull.stderr
    run_dir = latest_run_dir(local_project, "demo")
    assert f"adapter: tasks/demo/runs/{run_dir.name}/adapter_model.safetensors" in pull.stdout
    assert load_and_generate(run_dir) is not None
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    estimate = json.loads((run_dir / "run.json").read_text())["memory"]  # the pre-flight's, recorded with the run
    assert estimate["total"] > estimate["weights"] > 0 and estimate["free"] is None, estimate
    status = run_gpurun(local_project, "status")
    assert "succeeded" in status.stdout and "(base " in status.stdout, status.stdout  # the suite beside the base's
    stop = run_gpurun(local_project, "stop")
    assert stop.returncode == 0 and "already succeeded, nothing to stop" in stop.stdout, stop.stdout + stop.stderr

    # Fold the adapter into the base model on the host, bring it home, load it as a plain model.
    merge = run_gpurun(local_project, "merge")
    assert merge.returncode == 0 and "merged model written" in merge.stdout, merge.stdout + merge.stderr
    assert not (run_dir / "merged").exists(), "the merged model only comes with --merged"
    assert run_gpurun(local_project, "pull", "--merged").returncode == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged")
    assert not hasattr(merged, "peft_config") and merged.config.model_type == "qwen2"


def test_logs_without_follow_prints_the_log_and_pull_refuses_a_running_job(local_project):
    train = run_gpurun(local_project, "train", "tasks/demo", "--set", "training.max_steps=400")
    assert train.returncode == 0, train.stderr
    wait_for(lambda: "base model: builtin:tiny" in run_gpurun(local_project, "logs").stdout, what="the model line")
    pull = run_gpurun(local_project, "pull")
    assert pull.returncode == 1 and "still running" in pull.stderr and "--partial" in pull.stderr
    stop = run_gpurun(local_project, "stop", "--grace", "20")
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    logs = run_gpurun(local_project, "logs")
    assert logs.returncode == 0 and "base model: builtin:tiny" in logs.stdout
    partial = run_gpurun(local_project, "pull")
    assert partial.returncode == 0 and "no final adapter" in partial.stdout and "--checkpoints" in partial.stdout
    followed = run_gpurun(local_project, "logs", "-f")
    assert followed.returncode == 130, "a stopped run's follow ends with the documented code"


def test_a_failing_job_is_reported_failed_with_its_exit_code(local_project):
    # A base model path that does not exist passes the laptop's checks but fails on the host.
    train = run_gpurun(local_project, "train", "tasks/demo", "--set", "base_model=/nonexistent/model")
    assert train.returncode == 0, train.stderr
    logs = run_gpurun(local_project, "logs", "-f")
    assert logs.returncode == 1, logs.stdout
    assert "failed with exit code 1" in logs.stdout
    runs = run_gpurun(local_project, "runs")
    assert "failed" in runs.stdout
