"""Small things a new user hit: a task folder with spaces, a default host without editing hosts.yaml,
`runs` showing how each run was configured, and help that agrees with the README."""

import re
import shutil
import time

import click

from launcher.cli import main
from launcher.hosts import resolve_host
from launcher.runs import History, RunRecord
from launcher.sync import task_name_of
from tests.conftest import REPO, run_gpurun


def test_a_task_folder_with_spaces_trains_and_pulls_into_its_own_folder(ssh_project, host_workdir):
    task = ssh_project / "tasks" / "hr data"
    shutil.move(ssh_project / "tasks" / "hr", task)
    host_name = task_name_of(task)
    assert re.fullmatch(r"hr-data-[0-9a-f]{6}", host_name)

    pushed = run_gpurun(ssh_project, "push", "tasks/hr data", "--host", "a100")
    assert pushed.returncode == 0, pushed.stderr
    assert (host_workdir / "tasks" / host_name / "task.yaml").is_file()

    started = run_gpurun(ssh_project, "train", "tasks/hr data", "--host", "a100", "--set", "samples=1")
    assert started.returncode == 0, started.stderr
    run_id = History(ssh_project).get(None).run_id
    assert run_id.startswith(f"{host_name}-")
    assert run_gpurun(ssh_project, "logs", "-f", run_id).returncode == 0
    pulled = run_gpurun(ssh_project, "pull", run_id)
    assert pulled.returncode == 0, pulled.stderr
    assert (task / "runs" / run_id / "adapter_model.safetensors").is_file()
    listed = run_gpurun(ssh_project, "runs")
    assert "hr data" in listed.stdout and "--set samples=1" in listed.stdout, listed.stdout


def test_folders_whose_names_differ_only_in_unsafe_characters_get_different_host_names(tmp_path):
    names = {task_name_of(tmp_path / name) for name in ("hr data", "hr-data", "hr:data", "hr  data", "数据")}
    assert len(names) == 5
    assert task_name_of(tmp_path / "hr-data") == "hr-data"  # a safe name is used as it is
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) for name in names)


def test_gpurun_host_makes_a_box_the_default_for_every_command(ssh_project, host_workdir, monkeypatch):
    pushed = run_gpurun(ssh_project, "push", "tasks/hr", env={"GPURUN_HOST": "a100"})  # hosts.yaml says local
    assert pushed.returncode == 0, pushed.stderr
    assert "to a100" in pushed.stdout
    assert (host_workdir / "tasks" / "hr" / "task.yaml").is_file()

    monkeypatch.setenv("GPURUN_HOST", "a100")
    assert resolve_host(ssh_project, None).name == "a100"
    assert resolve_host(ssh_project, "local").name == "local"  # --host still wins
    monkeypatch.delenv("GPURUN_HOST")
    assert resolve_host(ssh_project, None).name == "local"


def test_runs_shows_each_runs_experiment_and_overrides(local_project):
    history = History(local_project)
    common = dict(task="demo", task_dir=str(local_project / "tasks" / "demo"), host="local", trainer_root="/x")
    history.add(
        RunRecord(
            run_id="demo-1",
            started_at=time.time() - 60,
            state="succeeded",
            experiment="qlora",
            overrides='["training.max_steps=6", "training.learning_rate=1e-4"]',
            **common,
        )
    )
    history.add(RunRecord(run_id="demo-2", started_at=time.time(), state="failed", **common))
    listed = run_gpurun(local_project, "runs")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "demo-1" in line)
    assert "--exp qlora --set training.max_steps=6 --set training.learning_rate=1e-4" in row
    assert "--exp" not in next(line for line in listed.stdout.splitlines() if "demo-2" in line)


def test_every_option_the_readme_names_for_a_command_exists():
    """The README's command table: each row's `--option`s are options of that row's command."""
    readme = (REPO / "README.md").read_text()
    checked = 0
    for match in re.finditer(r"^\| `gpurun (\w+)[^`]*` \|(.*)$", readme, re.MULTILINE):
        name, row = match.group(1), match.group(0)
        command = main.commands[name]
        with click.Context(command, info_name=name):
            options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for option in set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", row)):
            assert option in options | {"--help"}, f"README's `gpurun {name}` row names {option}, which it lacks"
        checked += 1
    assert checked >= 10


def test_compare_leaves_out_figures_no_run_has_and_turns_a_column_per_run_when_rows_would_not_fit():
    from rich.console import Console

    from launcher.render import compare_table

    rows = [
        {"run_id": f"demo-20261203-0107{i}4-4e53", "config": {"training": {"learning_rate": lr}}, "state": "succeeded",
         "step": 10, "train_loss": 1.5, "accuracy": 0.1 * i, "arguments_accuracy": 0.0, "memory_estimate_gb": 0.56}
        for i, lr in enumerate((0.003, 0.008))
    ]  # fmt: skip
    rows[1]["experiment"] = "qlora"

    def shown(width: int) -> list[str]:
        console = Console(width=width, record=True)
        console.print(compare_table(rows, ["training.learning_rate"], width))
        return [line.strip() for line in console.export_text().splitlines() if line.strip()]

    wide = shown(200)
    assert wide[0].split()[:4] == ["run", "experiment", "learning_rate", "state"] and "peak GB" not in wide[0], wide
    assert wide[2].split()[1:3] == ["–", "0.003"] and wide[3].split()[1:3] == ["qlora", "0.008"], wide
    narrow = shown(80)
    assert narrow[0].split() == [row["run_id"] for row in rows], narrow
    (suite,) = [line for line in narrow if line.startswith("suite name · args")]
    assert suite.split()[-6:] == ["0.000", "·", "0.000", "0.100", "·", "0.000"], suite
    assert not any(line.startswith("peak GB") for line in narrow) and "…" not in "".join(narrow), narrow
    numbered = shown(60)  # not even the ids fit side by side: numbered columns below a list of them
    assert numbered[:2] == [f"1  {rows[0]['run_id']}", f"2  {rows[1]['run_id']}"] and numbered[2].split() == ["1", "2"]
    assert "…" not in "".join(numbered), numbered
