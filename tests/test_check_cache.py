"""The laptop's row and token checks are cached by what shapes their result (issue 17): a `train` that changes
only a training setting, and a `push` of unchanged data, skip them and say so; what changes the rows or the tokens
checks again, and a bad row is refused even after a clean, cached run."""

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_gpurun

CACHED = "unchanged since the last check (cached)"


def started(output: str) -> str:
    match = re.search(r"started (\S+) on", output)
    assert match, output
    return match.group(1)


@pytest.fixture
def checked(tmp_path, model_cache, monkeypatch) -> Path:
    """A cold check cache of this test's own (every other test shares one, keyed by content), beside the shared
    builtin model."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(model_cache / "models")
    monkeypatch.setenv("GPURUN_CACHE", str(cache))
    return cache / "checked"


def cache_files(checked: Path, kind: str) -> set[str]:
    return {p.name for p in checked.glob(f"{kind}-*.json")}


def test_train_with_only_the_learning_rate_changed_skips_the_checks(local_project, checked):
    first = run_gpurun(local_project, "train", "tasks/demo", "--set", "training.learning_rate=1e-3")
    assert first.returncode == 0, first.stderr
    assert CACHED not in first.stdout, first.stdout
    assert len(cache_files(checked, "tokens")) == 1 and len(cache_files(checked, "rows")) == 1
    second = run_gpurun(
        local_project, "train", "tasks/demo", "--set", "training.learning_rate=2e-3", "--set", "training.max_steps=5"
    )
    assert second.returncode == 0, second.stderr
    assert f"rows and tokens: {CACHED}" in second.stdout, second.stdout
    for run_id in (started(first.stdout), started(second.stdout)):
        run_gpurun(local_project, "stop", run_id, "--grace", "5")

    # max_length shapes the tokens (not the rows): the token checks run again, the row checks do not.
    longer = run_gpurun(local_project, "validate", "tasks/demo", "--set", "training.max_length=800")
    assert longer.returncode == 0, longer.stderr
    assert f"rows: {CACHED}" in longer.stdout and "rows and tokens" not in longer.stdout, longer.stdout
    assert len(cache_files(checked, "tokens")) == 2

    # A corrupt cache file is ignored: checked again, and written anew.
    for name in cache_files(checked, "tokens") | cache_files(checked, "rows"):
        (checked / name).write_text("{not json")
    again = run_gpurun(local_project, "validate", "tasks/demo", "--set", "training.max_length=800")
    assert again.returncode == 0 and CACHED not in again.stdout, again.stdout + again.stderr
    cached = run_gpurun(local_project, "validate", "tasks/demo", "--set", "training.max_length=800")
    assert f"rows and tokens: {CACHED}" in cached.stdout, cached.stdout


def test_a_changed_row_is_checked_again_and_a_bad_one_refused_after_a_cached_run(local_project, checked):
    train = local_project / "tasks" / "demo" / "data" / "train.jsonl"
    assert run_gpurun(local_project, "push", "tasks/demo").returncode == 0
    unchanged = run_gpurun(local_project, "push", "tasks/demo")
    assert unchanged.returncode == 0, unchanged.stderr
    assert f"rows: {CACHED}" in unchanged.stdout, unchanged.stdout

    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines[:-1]) + "\n")  # one row fewer: a good change
    changed = run_gpurun(local_project, "push", "tasks/demo")
    assert changed.returncode == 0 and CACHED not in changed.stdout, changed.stdout + changed.stderr

    train.write_text("\n".join([*lines[:-1], '{"messages": "not a list"}']) + "\n")
    bad = run_gpurun(local_project, "push", "tasks/demo")
    assert bad.returncode == 1 and "train.jsonl:" in bad.stderr, bad.stdout + bad.stderr
    again = run_gpurun(local_project, "push", "tasks/demo")  # a refusal is never cached
    assert again.returncode == 1 and "train.jsonl:" in again.stderr, again.stdout + again.stderr

    train.write_text("\n".join(lines) + "\n")  # back to the first bytes: its cached result serves again
    restored = run_gpurun(local_project, "push", "tasks/demo")
    assert restored.returncode == 0 and f"rows: {CACHED}" in restored.stdout, restored.stdout + restored.stderr

    # The cache is the machine's, keyed by content: a second clone of the project is not checked again.
    clone = local_project.parent / "clone"
    shutil.copytree(local_project, clone, ignore=shutil.ignore_patterns(".gpurun"))
    cloned = run_gpurun(clone, "push", "tasks/demo")
    assert cloned.returncode == 0 and f"rows: {CACHED}" in cloned.stdout, cloned.stdout + cloned.stderr
