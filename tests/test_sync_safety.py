"""Sync and pull that lose nothing, against the real test sshd."""

import yaml

from tests.conftest import run_gpurun
from tests.test_lifecycle import latest_run_id


def test_push_summary_names_large_ignored_paths(ssh_project):
    task = ssh_project / "tasks" / "hr"
    (task / "raw").mkdir()
    (task / "raw" / "dump.bin").write_bytes(b"\0" * 3_000_000)
    (task / ".gitignore").write_text("raw/\n")
    result = run_gpurun(ssh_project, "push", "tasks/hr", "--host", "a100")
    assert result.returncode == 0, result.stderr
    sent = [p for p in task.rglob("*") if p.is_file() and "raw" not in p.parts]
    assert f"{len(sent)} files" in result.stdout and "largest: data/train.jsonl" in result.stdout, result.stdout
    assert "not sent (ignore rules): raw/dump.bin (3.0 MB)" in result.stdout


def test_a_workdir_of_root_or_home_is_refused(ssh_project):
    for workdir in ("/", "~", ""):
        hosts = yaml.safe_load((ssh_project / "hosts.yaml").read_text())
        hosts["hosts"]["a100"]["workdir"] = workdir
        (ssh_project / "hosts.yaml").write_text(yaml.safe_dump(hosts))
        result = run_gpurun(ssh_project, "push", "tasks/hr", "--host", "a100")
        assert result.returncode == 1 and "too broad" in result.stderr, (workdir, result.stderr)


def test_pull_never_overwrites_a_local_edit_without_force(ssh_project):
    assert run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100").returncode == 0
    assert run_gpurun(ssh_project, "logs", "-f").returncode == 0
    assert run_gpurun(ssh_project, "pull").returncode == 0
    run_dir = ssh_project / "tasks" / "hr" / "runs" / latest_run_id(ssh_project)
    # Pulling again, unchanged, is a quiet no-op.
    assert run_gpurun(ssh_project, "pull").returncode == 0
    edited = run_dir / "adapter_config.json"
    edited.write_text('{"mine": true}')
    (run_dir / "my_notes.txt").write_text("keep me")
    refused = run_gpurun(ssh_project, "pull")
    assert refused.returncode == 1 and "adapter_config.json" in refused.stderr and "--force" in refused.stderr
    assert edited.read_text() == '{"mine": true}'
    forced = run_gpurun(ssh_project, "pull", "--force")
    assert forced.returncode == 0, forced.stderr
    assert '"mine"' not in edited.read_text()
    assert (run_dir / "my_notes.txt").read_text() == "keep me", "pull deleted a local file"


def test_pull_watch_fetches_checkpoints_while_the_run_goes_on(ssh_project):
    steps = ["--set", "training.max_steps=40", "--set", "training.save_steps=10", "--set", "training.eval_steps=100"]
    assert run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100", *steps).returncode == 0
    watch = run_gpurun(ssh_project, "pull", "--watch", "--interval", "1")
    assert watch.returncode == 0, watch.stderr
    assert "next fetch in 1s" in watch.stdout and "fetched checkpoint-" in watch.stdout
    run_dir = ssh_project / "tasks" / "hr" / "runs" / latest_run_id(ssh_project)
    assert (run_dir / "adapter_model.safetensors").exists()
    assert (run_dir / "checkpoint-40").is_dir()


def test_logs_tail_starts_near_the_end(ssh_project):
    assert run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100").returncode == 0
    assert run_gpurun(ssh_project, "logs", "-f").returncode == 0
    tail = run_gpurun(ssh_project, "logs", "-f", "--tail", "2")
    assert tail.returncode == 0
    assert "base model:" not in tail.stdout and "saved adapter" in tail.stdout
    short = run_gpurun(ssh_project, "logs", "--tail", "1")
    assert short.stdout.strip().startswith("saved adapter"), short.stdout
