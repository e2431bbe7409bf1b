"""A dropped connection during `gpurun train` never leaves a run the laptop does not know (issue 17, item 5).

The test sshd is killed (listener and every session) at each moment of `train`, held open by
GPURUN_TEST_PAUSE (trainer/testpause.py): before the push, mid-push, between the push and the start,
during the host's start, and after the run began but before its reply. Afterwards, with sshd back:
either nothing runs on the host and the laptop has no run, or `train` said the run may have started
(naming it and `gpurun status RUN`) and `runs`, `status` and `logs -f` find it.
"""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from launcher.runs import History
from tests.conftest import gpurun_argv, run_gpurun
from tests.test_lifecycle import kill_sshd_and_sessions, wait_for

HOLD_S = 4.0
# (the step held, whether the host's start holds it: its pause is set in the host's `env:`)
MOMENTS = [
    ("push", False),
    ("trainer-push", False),
    ("start", False),
    ("host-start", True),
    ("reply", True),
]


def host_starts(host_workdir: Path) -> list[int]:
    """The host's `python -m trainer start` processes for this test's workdir (the host is this machine)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm != "ssh" and b"start" in argv and any(str(host_workdir).encode() in a for a in argv):
                found.append(int(entry.name))
    return found


def runs_on_host(host_workdir: Path) -> set[str]:
    """Runs that began on the host: run.json written (a directory alone is a start that never began)."""
    runs = host_workdir / "runs"
    return {d.name for d in runs.iterdir() if (d / "run.json").exists()} if runs.exists() else set()


def drop_during(project: Path, host_workdir: Path, sshd, step: str, on_host: bool, log: Path):
    """`gpurun train` with `step` held open; sshd killed while it holds, and started again once `train` has
    ended and the host's start (if any) is done. Returns train's (exit code, stderr)."""
    pause = f"{step}:{HOLD_S}"
    env = {**os.environ, "COLUMNS": "200"}
    if on_host:
        hosts = yaml.safe_load((project / "hosts.yaml").read_text())
        hosts["hosts"]["a100"]["env"]["GPURUN_TEST_PAUSE"] = pause
        (project / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    else:
        env["GPURUN_TEST_PAUSE"] = pause
    argv = [*gpurun_argv(), "train", "tasks/hr", "--host", "a100", "--set", "training.max_steps=4"]
    with open(log, "w") as err:
        train = subprocess.Popen(argv, cwd=project, stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)
    killed = False
    try:
        if on_host and step == "reply":  # the run began (its pid file is written before the reply)
            held = lambda: any((host_workdir / "runs").glob("*/pid"))  # noqa: E731
        elif on_host:
            held = lambda: host_starts(host_workdir)  # noqa: E731
        else:
            held = lambda: f"test pause at {step}" in log.read_text()  # noqa: E731
        wait_for(lambda: held() or train.poll() is not None, 300, f"train to hold at {step}")
        assert train.poll() is None, log.read_text()
        kill_sshd_and_sessions(sshd)
        killed = True
        train.wait(timeout=120)
        wait_for(lambda: not host_starts(host_workdir), 60, "the host's start to end")
    finally:
        if train.poll() is None:
            train.kill()
            train.wait()
        if killed:
            sshd.start()
    return train.returncode, log.read_text()


@pytest.mark.parametrize(("step", "on_host"), MOMENTS, ids=[m[0] for m in MOMENTS])
def test_a_drop_at_any_moment_of_train_leaves_no_run_the_laptop_does_not_know(
    ssh_project, host_workdir, sshd, tmp_path, step, on_host
):
    code, stderr = drop_during(ssh_project, host_workdir, sshd, step, on_host, tmp_path / "train.err")
    assert code == 1, stderr
    began = runs_on_host(host_workdir)
    listed = run_gpurun(ssh_project, "runs")
    assert listed.returncode == 0, listed.stderr
    known = {r.run_id: r.state for r in History(ssh_project).all()}

    if not on_host:  # the start never reached the host: nothing runs there, and the laptop remembers nothing
        assert began == set(), began
        assert known == {}, known
        assert "Error: cannot reach a100" in stderr, stderr
        assert "no runs yet" in listed.stdout, listed.stdout
        return

    # The start reached the host: `train` said so, naming the run, and the laptop knows it.
    (run_id,) = known
    assert f"Error: no answer from a100 while starting {run_id} (" in stderr, stderr
    assert "it may have started there" in stderr
    assert f"Hint: `gpurun status {run_id}` finds out" in stderr, stderr
    assert run_id in listed.stdout, listed.stdout
    status = run_gpurun(ssh_project, "status", run_id)
    assert status.returncode == 0, status.stderr
    if run_id not in began:  # the drop killed the host's start before the run began: settled, never to start
        assert began == set(), began
        assert History(ssh_project).get(run_id).state == "not_started", status.stdout
        logs = run_gpurun(ssh_project, "logs", "-f", run_id)
        assert logs.returncode == 1 and f"Error: {run_id} never started on a100" in logs.stderr, logs.stderr
        return
    assert began == {run_id}, began
    assert History(ssh_project).get(run_id).state in ("running", "succeeded"), status.stdout
    # `logs -f` follows it to its end: a stop, here, so the test need not wait for the training.
    env = {**os.environ, "COLUMNS": "200"}
    follow = subprocess.Popen(
        [*gpurun_argv(), "logs", "-f", run_id],
        cwd=ssh_project,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stop = run_gpurun(ssh_project, "stop", run_id, "--grace", "60")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    out, _ = follow.communicate(timeout=120)
    assert follow.returncode == 130 and "stopped (gpurun stop)" in out, out[-2000:]
    assert "stopped" in run_gpurun(ssh_project, "status", run_id).stdout
