"""Slurm clusters: a `scheduler: slurm` host is a login node; runs go through sbatch, srun and the same wrapper.

The end-to-end tests run a real one-node Slurm cluster on this machine (tests/slurmctl.py) and reach its
login node through the test sshd, as a user reaches a cluster's login node.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from launcher.errors import GpurunError
from launcher.hosts import load_hosts
from tests.conftest import gpurun_argv, run_gpurun, write_project
from tests.readme import readme_blocks
from tests.slurmctl import start_cluster, unavailable_reason
from tests.test_lifecycle import wait_for
from trainer.host.slurm import batch_script, parse_scontrol, parse_squeue, queued_message

WRAPPER = ["/venv/bin/python", "-c", "BOOT", "/w/trainer/1", "wrap", "/w/runs/hr-1"]

# ---------------------------------------------------------------- pure: the script, squeue, hosts.yaml


def test_batch_script_asks_slurm_for_what_the_host_entry_says():
    slurm = {"partition": "gpu", "account": "lab", "time": "24:00:00", "nodes": 2, "gpus_per_node": 4}
    script = batch_script(Path("/w/runs/hr-1"), {**slurm, "sbatch_args": ["--qos=high"]}, WRAPPER, "hr-1")
    directives = [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]
    assert directives == [
        "--job-name=gpurun-hr-1",
        "--partition=gpu",
        "--account=lab",
        "--time=24:00:00",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=4",
        "--signal=TERM@120",
        "--requeue",
        "--open-mode=append",
        "--output=/w/runs/hr-1/slurm-%j.out",
        "--chdir=/w/runs/hr-1",
        "--qos=high",
    ]
    assert script.startswith("#!/bin/bash\n")
    # The wrapper the ssh path detaches, under srun, one per node; quoted for the shell.
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1 /venv/bin/python -c BOOT /w/trainer/1 wrap /w/runs/hr-1" in (
        script
    )


def test_batch_script_without_gpus_or_account_leaves_them_to_the_cluster_defaults():
    script = batch_script(Path("/w/runs/hr-1"), {"signal_lead": 20}, WRAPPER, "hr-1")
    assert "--gpus-per-node" not in script and "--account" not in script and "--partition" not in script
    assert "#SBATCH --signal=TERM@20\n" in script


def test_batch_script_requeues_only_a_time_limit_stop_never_a_user_stop():
    script = batch_script(Path("/w/runs/hr-1"), {}, WRAPPER, "hr-1")
    body = script[script.index("srun ") :]
    assert 'if [ "$code" = 143 ] && [ ! -e stop_requested ]; then' in body
    assert 'scontrol requeue "$SLURM_JOB_ID"' in body
    # A requeued attempt must not start with the last attempt's exit_code: the state would read "ended".
    assert script.index("rm -f exit_code") < script.index("srun ")


def test_batch_script_is_valid_bash():
    script = batch_script(Path("/w/runs/hr 1"), {"partition": "gpu"}, [*WRAPPER[:-1], "/w/runs/hr 1"], "hr-1")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "'/w/runs/hr 1'" in script


def test_squeue_line_parses_to_state_and_reason():
    assert parse_squeue("12|PENDING|Resources\n") == {"job_id": "12", "slurm_state": "PENDING", "reason": "Resources"}
    assert parse_squeue("12|RUNNING|None\n") == {"job_id": "12", "slurm_state": "RUNNING", "reason": ""}
    assert parse_squeue("") is None
    status = parse_squeue("7|PENDING|Priority")
    assert queued_message(status) == "queued: Priority (job 7)"


def test_scontrol_show_job_parses_when_squeue_no_longer_lists_the_job():
    line = "JobId=12 JobName=gpurun-hr-1 UserId=root(0) JobState=COMPLETED Reason=None Dependency=(null)"
    assert parse_scontrol(line) == {"job_id": "12", "slurm_state": "COMPLETED", "reason": ""}
    assert parse_scontrol("slurm_load_jobs error: Invalid job id specified") is None


def write_hosts(tmp_path: Path, entry: dict) -> Path:
    (tmp_path / "hosts.yaml").write_text(yaml.safe_dump({"hosts": {"cluster": entry}}))
    return tmp_path


def test_hosts_yaml_slurm_entry_is_read(tmp_path):
    root = write_hosts(
        tmp_path,
        {"ssh": "me@login", "scheduler": "slurm", "slurm": {"partition": "gpu", "time": "4:00:00", "nodes": 2}},
    )
    host = load_hosts(root)[1]["cluster"]
    assert host.scheduler == "slurm"
    assert host.slurm == {"partition": "gpu", "time": "4:00:00", "nodes": 2, "sbatch_args": []}


@pytest.mark.parametrize(
    ("entry", "message", "hint"),
    [
        ({"scheduler": "pbs"}, "hosts.cluster.scheduler: 'pbs'", "the one scheduler gpurun knows: slurm"),
        ({"scheduler": "slurm", "slurm": {"partiton": "gpu"}}, "slurm.partiton: unknown key", "`partition`"),
        ({"scheduler": "slurm", "slurm": {"nodes": 0}}, "slurm.nodes: 0", "at least 1"),
        ({"scheduler": "slurm", "slurm": {"time": 86400}}, "slurm.time: 86400 is a number to YAML", "quote it"),
        ({"scheduler": "slurm", "slurm": {"partition": "gpu; rm -rf ~"}}, "is not a Slurm partition", "e.g."),
        ({"scheduler": "slurm", "slurm": {"sbatch_args": "--qos=high"}}, "slurm.sbatch_args", "a list of sbatch"),
        ({"scheduler": "slurm", "slurm": ["gpu"]}, "slurm: expected a mapping", "e.g."),
    ],
)
def test_hosts_yaml_slurm_mistakes_are_one_line_errors_with_a_hint(tmp_path, entry, message, hint):
    root = write_hosts(tmp_path, {"ssh": "me@login", **entry})
    with pytest.raises(GpurunError) as err:
        load_hosts(root)
    assert message in err.value.message and "\n" not in err.value.message
    assert hint in err.value.hint


def test_gpus_on_a_slurm_host_is_refused_before_anything_moves(tmp_path):
    entry = {"ssh": "me@login.invalid", "scheduler": "slurm", "slurm": {"gpus_per_node": 2}}
    project = write_project(tmp_path / "project", {"cluster": entry}, default="cluster", task_name="hr")
    result = run_gpurun(project, "train", "tasks/hr", "--gpus", "2")
    assert result.returncode == 1
    assert "Error: --gpus does not apply on cluster: Slurm chooses the GPUs there" in result.stderr + result.stdout
    assert "Hint: set hosts.cluster.slurm.gpus_per_node in hosts.yaml" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_readme_slurm_entry_loads_verbatim(tmp_path):
    (tmp_path / "hosts.yaml").write_text(readme_blocks("## Slurm clusters")[0])
    host = load_hosts(tmp_path)[1]["cluster"]
    assert host.scheduler == "slurm" and host.ssh == "me@login.cluster.example.org"
    assert host.slurm["time"] == "24:00:00" and host.slurm["gpus_per_node"] == 4
    script = batch_script(Path("/shared/me/gpurun/runs/hr-1"), host.slurm, WRAPPER, "hr-1")
    assert "#SBATCH --gpus-per-node=4\n" in script and "#SBATCH --qos=high\n" in script


# ---------------------------------------------------------------- a real one-node cluster

needs_slurm = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.cancel_all()
    cluster.stop()


@pytest.fixture
def slurm_project(tmp_path, sshd, model_cache, host_workdir, cluster):
    """A project whose `cluster` host is the test cluster's login node (the test sshd), with `slurm:` settings."""

    def make(steps: int = 6, env: dict | None = None, **slurm) -> Path:
        env = {"GPURUN_CACHE": str(model_cache), **cluster.env, **(env or {})}
        entry = sshd.host_entry(host_workdir, env=env, scheduler="slurm", slurm=slurm)
        return write_project(tmp_path / "project", {"cluster": entry}, default="cluster", task_name="hr", steps=steps)

    yield make
    cluster.cancel_all()  # never leave a job of this test running into the next one


def host_run(host_workdir: Path, project: Path) -> tuple[str, Path]:
    """The test's one run, as the login node's workdir (the cluster's shared filesystem) holds it."""
    runs = sorted((host_workdir / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0].name, runs[0]


def events_of(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@needs_slurm
def test_four_user_commands_verbatim_on_a_slurm_login_node(slurm_project, host_workdir, cluster):
    project = slurm_project()
    assert run_gpurun(project, "push", "tasks/hr").returncode == 0
    train = run_gpurun(project, "train")
    assert train.returncode == 0, train.stdout + train.stderr
    assert "started hr-" in train.stdout and "GPUs: Slurm's; job " in train.stdout
    logs = run_gpurun(project, "logs", "-f")
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert "succeeded" in logs.stdout and "loss" in logs.stdout
    pull = run_gpurun(project, "pull")
    assert pull.returncode == 0, pull.stdout + pull.stderr

    run_id, run_dir = host_run(host_workdir, project)
    local = project / "tasks" / "hr" / "runs" / run_id
    assert (local / "adapter_model.safetensors").is_file()
    # It went through Slurm: the script sbatch ran, Slurm's own output file, and the job id in run.json.
    job_id = json.loads((run_dir / "run.json").read_text())["slurm"]["job_id"]
    assert f"#SBATCH --output={run_dir.resolve()}/slurm-%j.out" in (run_dir / "job.sbatch").read_text()
    assert (run_dir / f"slurm-{job_id}.out").is_file()
    assert (run_dir / "exit_code").read_text().strip() == "0"
    assert events_of(run_dir)[-1]["kind"] == "done"
    status = run_gpurun(project, "status")
    assert status.returncode == 0 and "succeeded" in status.stdout


@needs_slurm
def test_queued_while_the_partition_is_full_then_runs_and_stops_with_one_checkpoint(
    slurm_project, host_workdir, cluster
):
    project = slurm_project(steps=200)
    blocker = cluster.run(
        "sbatch", "--parsable", "--exclusive", "--output=/dev/null", "--wrap", "sleep 120"
    ).stdout.strip()
    wait_for(lambda: any(line.startswith(f"{blocker} RUNNING") for line in cluster.squeue()), 30, "the blocker")

    train = run_gpurun(project, "train", "tasks/hr")
    assert train.returncode == 0, train.stdout + train.stderr
    job_id = train.stdout.split("job ")[1].split(")")[0]
    assert f"queued: Resources (job {job_id})" in train.stdout
    status = run_gpurun(project, "status")
    assert "queued" in status.stdout, status.stdout
    follower = subprocess.Popen(
        [*gpurun_argv(), "logs", "-f"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        time.sleep(3)  # logs -f is following the queued run
        cluster.run("scancel", blocker)
        run_id, run_dir = host_run(host_workdir, project)
        wait_for(lambda: any(e.get("kind") == "log" for e in events_of(run_dir)), 120, "training steps")
        stop = run_gpurun(project, "stop")
        assert stop.returncode == 0 and f"{run_id}: stopped" in stop.stdout, stop.stdout + stop.stderr
        out, _ = follower.communicate(timeout=120)
    finally:
        follower.kill()
    assert follower.returncode == 130, out
    assert f"queued: Resources (job {job_id})" in out and f"running: job {job_id} started" in out
    assert out.index("queued: Resources") < out.index("running: job")
    from trainer.checkpoints import latest_complete_checkpoint

    stopped = [e for e in events_of(run_dir) if e["kind"] == "stopped"]
    latest = latest_complete_checkpoint(run_dir / "output")
    assert len(stopped) == 1 and latest is not None and stopped[0]["checkpoint"] == latest.name, stopped
    assert stopped[0]["step"] == int(latest.name.split("-")[1])  # saved at the step it stopped at
    assert not any(line.startswith(f"{job_id} ") and "RUNNING" in line for line in cluster.squeue())
    assert "requeued" not in (run_dir / "train.log").read_text()  # a user's stop is never requeued


@needs_slurm
def test_stop_of_a_queued_job_cancels_it_and_nothing_ever_runs(slurm_project, host_workdir, cluster):
    project = slurm_project()
    blocker = cluster.run(
        "sbatch", "--parsable", "--exclusive", "--output=/dev/null", "--wrap", "sleep 120"
    ).stdout.strip()
    wait_for(lambda: any(line.startswith(f"{blocker} RUNNING") for line in cluster.squeue()), 30, "the blocker")
    assert run_gpurun(project, "train", "tasks/hr").returncode == 0
    stop = run_gpurun(project, "stop")
    assert stop.returncode == 0 and ": stopped" in stop.stdout, stop.stdout + stop.stderr
    run_id, run_dir = host_run(host_workdir, project)
    job_id = json.loads((run_dir / "run.json").read_text())["slurm"]["job_id"]
    assert not any(line.startswith(f"{job_id} ") for line in cluster.squeue() if "CANCELLED" not in line)
    assert not (run_dir / "train.log").exists()  # the trainer never started
    assert "stopped" in run_gpurun(project, "status").stdout


def elapsed_seconds(cluster, job_id: str) -> int:
    """How long the job has run, as squeue says it: [[DD-]HH:]MM:SS."""
    shown = cluster.run("squeue", "-h", "-j", job_id, "-o", "%M").stdout.strip()
    days, _, clock = shown.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


@needs_slurm
def test_a_job_at_its_time_limit_checkpoints_is_requeued_resumes_and_succeeds_with_every_step(
    slurm_project, host_workdir, cluster
):
    # Slurm checks time limits every 30 s and sends the --signal once fewer than lead + 30 s are left. The job starts
    # with room to spare; once it trains, the cluster's admin cuts its limit to 2 minutes, which (past 30 s of
    # elapsed time, lead 60 s) brings the signal at the next check, mid-training: 150 steps that each also sleep
    # 0.5 s (GPURUN_TEST_STEP_SECONDS) last over 75 s and leave the CPU to the other worker. Signalled by a limit
    # set from the start, an attempt still starting up on busy cores stopped with nothing to save, and was
    # requeued to start up again (370 s in a loaded suite).
    steps = 150
    project = slurm_project(steps=steps, env={"GPURUN_TEST_STEP_SECONDS": "0.5"}, time="10", signal_lead=60)
    sets = [
        "--set",
        "training.save_steps=50",
        "--set",
        "training.eval_steps=50",
        "--set",
        "training.logging_steps=10",
    ]
    train = run_gpurun(project, "train", "tasks/hr", *sets)
    assert train.returncode == 0, train.stdout + train.stderr
    run_id, run_dir = host_run(host_workdir, project)
    job_id = json.loads((run_dir / "run.json").read_text())["slurm"]["job_id"]
    wait_for(lambda: any(e["kind"] == "log" and e.get("step", 0) >= 10 for e in events_of(run_dir)), 300, "steps")
    # 80 s left from now: fewer than lead + 30 s, so the signal comes at the next check, with time to save.
    limit = elapsed_seconds(cluster, job_id) + 80
    cluster.run("scontrol", "update", f"JobId={job_id}", f"TimeLimit={limit // 60}:{limit % 60:02d}")

    def requeued_with_a_checkpoint() -> bool:
        log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
        stopped = [e for e in events_of(run_dir) if e["kind"] == "stopped"]
        return bool(stopped) and bool(stopped[-1].get("checkpoint")) and log.count("requeued") >= len(stopped)

    wait_for(requeued_with_a_checkpoint, 300, "a checkpoint on the time-limit signal, then the requeue")
    # The cluster's admin lifts the limit of the requeued job: every attempt would otherwise be signalled again,
    # and on a loaded 2-core machine an attempt can spend its whole minute starting up. What is tested is done.
    cluster.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=UNLIMITED")
    logs = run_gpurun(project, "logs", "-f", timeout=1200)
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert "succeeded" in logs.stdout
    log = (run_dir / "train.log").read_text()
    assert f"time limit near: job {job_id} requeued" in log, log[-3000:]
    assert "restarted: continuing from" in log, log[-3000:]
    events = events_of(run_dir)
    stopped = [e for e in events if e["kind"] == "stopped"]
    assert stopped and stopped[-1].get("checkpoint"), stopped  # the checkpoint it saved on the signal
    assert f"continuing from {run_dir.resolve()}/output/{stopped[-1]['checkpoint']}" in log
    assert events[-1]["kind"] == "done" and events[-1]["step"] == steps
    assert json.loads((run_dir / "output" / "trainer_state.json").read_text())["global_step"] == steps
    assert not (run_dir / "stop_requested").exists()


@needs_slurm
def test_a_job_sbatch_refuses_is_one_error_and_leaves_no_run_behind(slurm_project, host_workdir):
    project = slurm_project(partition="nosuch")
    train = run_gpurun(project, "train", "tasks/hr")
    assert train.returncode == 1, train.stdout + train.stderr
    said = train.stdout + train.stderr
    assert (
        "Error: on cluster: sbatch refused the job: sbatch: error: Batch job submission failed: Invalid partition"
        in said
    )
    assert "Hint: check slurm: in hosts.yaml (partition, account, time) against `sinfo`" in said, said
    assert "Traceback" not in said
    assert not list((host_workdir / "runs").iterdir())  # nothing half-made on the cluster
    assert "no runs yet" in run_gpurun(project, "status").stderr  # nor in the laptop's history
