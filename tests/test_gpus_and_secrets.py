"""GPUs never double-booked, hostile values never executed, secrets never shown.

The one fake in the suite: an `nvidia-smi` script first on the test host's PATH, printing canned CSV
(there is no GPU here). Everything else is the real sshd, rsync and trainer.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import gpurun_argv, run_gpurun
from tests.test_lifecycle import latest_run_id, trainer_pid

FAKE_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu*) cat "$FAKE_SMI_DIR/gpus.csv" ;;
  *--query-compute-apps*) cat "$FAKE_SMI_DIR/apps.csv" ;;
esac
"""


def fake_gpus(project: Path, tmp_path: Path, gpus: list[str], apps: list[str] = ()) -> Path:
    """Put a fake nvidia-smi on the test host's PATH, with its own lock dir."""
    smi = tmp_path / "fake-smi"
    smi.mkdir()
    (smi / "nvidia-smi").write_text(FAKE_SMI)
    (smi / "nvidia-smi").chmod(0o755)
    (smi / "gpus.csv").write_text("".join(line + "\n" for line in gpus))
    (smi / "apps.csv").write_text("".join(line + "\n" for line in apps))
    hosts = yaml.safe_load((project / "hosts.yaml").read_text())
    hosts["hosts"]["a100"]["env"].update(
        PATH=f"{smi}:{os.environ['PATH']}", FAKE_SMI_DIR=str(smi), GPURUN_LOCK_DIR=str(tmp_path / "locks")
    )
    (project / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    return smi


TWO_FREE = ["0, GPU-aaa, 10, 81920, 0", "1, GPU-bbb, 10, 81920, 0"]


def long_train(project: Path, *args: str):
    return run_gpurun(project, "train", "tasks/hr", "--host", "a100", "--set", "training.max_steps=400", *args)


def test_concurrent_auto_runs_get_different_gpus_and_a_third_is_refused(ssh_project, host_workdir, tmp_path):
    fake_gpus(ssh_project, tmp_path, TWO_FREE)
    commands = [["train", "tasks/hr", "--host", "a100", "--gpus", "auto", "--set", "training.max_steps=400"]] * 2
    procs = [
        subprocess.Popen(
            [*gpurun_argv(), *c],
            cwd=ssh_project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in commands
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    run_ids = [line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("started")]
    visible = sorted(json.loads((host_workdir / "runs" / r / "run.json").read_text())["gpus"] for r in run_ids)
    assert visible == ["0", "1"]
    # The job itself sees its GPU.
    for run_id in run_ids:
        environ = Path(f"/proc/{trainer_pid(host_workdir / 'runs' / run_id)}/environ").read_bytes().split(b"\0")
        gpus = json.loads((host_workdir / "runs" / run_id / "run.json").read_text())["gpus"]
        assert f"CUDA_VISIBLE_DEVICES={gpus}".encode() in environ

    third = long_train(ssh_project, "--gpus", "auto")
    assert third.returncode == 1
    assert "held by run" in third.stderr and run_ids[0] in third.stderr + run_ids[1], third.stderr
    named = long_train(ssh_project, "--gpus", "0,")
    assert named.returncode == 1 and "GPU 0 is held by run" in named.stderr, named.stderr

    for run_id in run_ids:  # a stopped job releases its GPU
        assert run_gpurun(ssh_project, "stop", run_id, "--grace", "30").returncode == 0
    again = long_train(ssh_project, "--gpus", "auto")
    assert again.returncode == 0, again.stderr
    assert run_gpurun(ssh_project, "stop", latest_run_id(ssh_project), "--grace", "30").returncode == 0


def test_busy_and_missing_gpus_are_refused_and_force_overrides(ssh_project, host_workdir, tmp_path):
    fake_gpus(ssh_project, tmp_path, TWO_FREE, apps=["GPU-aaa, 4242"])
    busy = long_train(ssh_project, "--gpus", "0,")
    assert busy.returncode == 1 and "GPU 0 is in use by pid 4242" in busy.stderr, busy.stderr
    missing = long_train(ssh_project, "--gpus", "5,")
    assert missing.returncode == 1 and "no GPU 5" in missing.stderr and "it has: 0, 1" in missing.stderr
    auto = long_train(ssh_project, "--gpus", "auto")  # skips the busy one
    assert auto.returncode == 0 and "GPUs: 1" in auto.stdout, auto.stdout + auto.stderr
    assert run_gpurun(ssh_project, "stop", latest_run_id(ssh_project), "--grace", "30").returncode == 0
    forced = long_train(ssh_project, "--gpus", "0,", "--force")
    assert forced.returncode == 0 and "GPUs: 0" in forced.stdout, forced.stderr
    assert run_gpurun(ssh_project, "stop", latest_run_id(ssh_project), "--grace", "30").returncode == 0


def test_a_host_without_nvidia_smi_trains_on_the_cpu_with_a_warning(ssh_project):
    result = run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100", "--gpus", "auto")
    assert result.returncode == 0, result.stderr
    assert "no nvidia-smi on this host: training runs on the CPU" in result.stdout
    assert run_gpurun(ssh_project, "logs", "-f").returncode == 0


HOSTILE = "x; touch PWNED1 $(touch PWNED2) `touch PWNED3` 'q\" \\ $HOME"


def test_hostile_names_and_values_are_never_executed(tmp_path, sshd, model_cache):
    from tests.conftest import write_project

    root = tmp_path / "my 'proj' $(touch PWNED4) `x`"
    workdir = tmp_path / "host dir; $(touch PWNED5) `touch PWNED6` 'a\"b"
    hosts = {"a100": sshd.host_entry(workdir, env={"GPURUN_CACHE": str(model_cache), "NOTE": HOSTILE})}
    project = write_project(root, hosts, default="a100", task_name="hr")
    push = run_gpurun(project, "push", "tasks/hr")
    assert push.returncode == 0, push.stderr
    train = run_gpurun(project, "train", "--set", f"data.system_prompt={HOSTILE}", "--set", "training.max_steps=2")
    assert train.returncode == 0, train.stderr
    run_id = latest_run_id(project)
    run_dir = workdir / "runs" / run_id
    assert run_gpurun(project, "logs", "-f").returncode == 0
    assert run_gpurun(project, "pull").returncode == 0
    assert (root / "tasks" / "hr" / "runs" / run_id / "adapter_model.safetensors").exists()
    assert json.loads((run_dir / "run.json").read_text())["config"]["data"]["system_prompt"] == HOSTILE
    assert json.loads((run_dir / "env.json").read_text())["NOTE"] == HOSTILE

    # A hostile task folder name reaches the host only as a safe spelling of itself; nothing runs.
    bad = project / "tasks" / "a;$(touch PWNED7)"
    shutil.copytree(project / "tasks" / "hr", bad, ignore=shutil.ignore_patterns("runs"))
    pushed = run_gpurun(project, "push", str(bad))
    assert pushed.returncode == 0, pushed.stderr
    on_host = [p.name for p in (workdir / "tasks").iterdir() if p.name != "hr"]
    assert len(on_host) == 1 and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", on_host[0]), on_host
    # An ssh target that looks like an option is refused, not passed to ssh.
    hosts["evil"] = {**hosts["a100"], "ssh": "-oProxyCommand=touch PWNED8"}
    (project / "hosts.yaml").write_text(yaml.safe_dump({"default": "a100", "hosts": hosts}))
    evil = run_gpurun(project, "push", "tasks/hr", "--host", "evil")
    assert evil.returncode == 1 and "Error:" in evil.stderr, evil.stderr

    # Remote commands run in the login's home; local ones in the project: look in both, and below tmp_path.
    planted = [*tmp_path.rglob("PWNED*"), *Path.home().glob("PWNED*"), *Path("/tmp").glob("PWNED*")]
    assert planted == [], f"a hostile value was executed: {planted}"


def test_hf_token_reaches_the_job_and_nothing_else(ssh_project, host_workdir):
    secret = "hf_SECRET_value_1234567890"
    result = run_gpurun(
        ssh_project, "train", "tasks/hr", "--host", "a100", "--set", "training.max_steps=30", env={"HF_TOKEN": secret}
    )
    assert result.returncode == 0, result.stderr
    run_dir = host_workdir / "runs" / latest_run_id(ssh_project)
    pid = trainer_pid(run_dir)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"HF_TOKEN={secret}".encode() in environ, "the secret did not reach the job"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert secret not in ps
    assert run_gpurun(ssh_project, "logs", "-f").returncode == 0
    assert run_gpurun(ssh_project, "pull").returncode == 0
    start = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])
    assert "HF_TOKEN" in start["secrets"]

    holders = []
    for base in (host_workdir, ssh_project):
        for path in base.rglob("*"):
            if path.is_file() and secret.encode() in path.read_bytes():
                holders.append(path)
    assert holders == [run_dir / "env.json"], holders
    assert (run_dir / "env.json").stat().st_mode & 0o777 == 0o600
