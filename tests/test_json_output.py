"""`--json`: one JSON document on stdout and nothing else, every other word on stderr, the exit codes unchanged
(issue 16 item 5). Each is parsed with json.loads in a project whose warnings fire: a row cut at max_length."""

import json

from tests.conftest import run_gpurun
from tests.test_lifecycle import latest_run_id

CUT = ("--set", "training.max_length=640")  # some demo rows are longer: a warning on every check


def test_train_status_runs_and_validate_print_json_only(local_project):
    validate = run_gpurun(local_project, "validate", "tasks/demo", *CUT, "--json")
    assert validate.returncode == 0, validate.stderr
    checked = json.loads(validate.stdout)
    assert checked["ok"] is True and checked["rows"]["train"] == 320, checked
    assert checked["warnings"] and "truncated" in validate.stderr, validate.stderr  # the words went to stderr
    assert checked["tokens"]["max_length"] == 640

    train = run_gpurun(local_project, "train", "tasks/demo", *CUT, "--set", "training.max_steps=2", "--json")
    assert train.returncode == 0, train.stderr
    started = json.loads(train.stdout)
    assert started["host"] == "local" and started["task"] == "demo" and started["run_id"].startswith("demo-")
    assert "follow it: gpurun logs -f" in train.stderr
    assert run_gpurun(local_project, "logs", "-f").returncode == 0

    status = run_gpurun(local_project, "status", started["run_id"], "--json")
    assert status.returncode == 0, status.stderr
    row = json.loads(status.stdout)
    assert row["run_id"] == started["run_id"] and row["state"] == "succeeded" and row["step"] == 2, row
    assert "training.max_length=640" in row["overrides"]

    runs = run_gpurun(local_project, "runs", "--json")
    assert [r["run_id"] for r in json.loads(runs.stdout)] == [started["run_id"]]

    # A second run with another learning rate, reported to W&B too (offline: no key here): compare shows what
    # differs and each run's figures; pull brings the W&B run home and says how to upload it.
    other_lr = ("--set", "training.learning_rate=1e-3", "--set", "report=[tensorboard, wandb]")
    again = run_gpurun(local_project, "train", *CUT, "--set", "training.max_steps=2", *other_lr)
    assert again.returncode == 0 and run_gpurun(local_project, "logs", "-f").returncode == 0, again.stderr
    compared = run_gpurun(local_project, "compare", "--task", "demo", "--json")
    assert compared.returncode == 0, compared.stderr
    both = json.loads(compared.stdout)
    assert both["differing"] == ["training.learning_rate", "report"], both["differing"]
    assert [r["run_id"] for r in both["runs"]][0] == started["run_id"]  # oldest first, as they were tried
    assert all(r["step"] == 2 and r["eval_loss"] > 0 and r["best_eval_loss"] <= r["eval_loss"] for r in both["runs"])
    assert all(0 < r["memory_estimate_gb"] < 4 for r in both["runs"]), both["runs"]  # the pre-flight's, per process
    table = run_gpurun(local_project, "compare", "--task", "demo")
    assert "learning_rate" in table.stdout and "0.001" in table.stdout and "best eval" in table.stdout, table.stdout

    # Both drawn in one picture; and pull draws loss.png beside the run it fetched.
    plotted = run_gpurun(local_project, "plot", "--task", "demo", "--last", "2", "-o", "both.png")
    assert plotted.returncode == 0 and "wrote both.png (2 runs)" in plotted.stdout, plotted.stdout + plotted.stderr
    assert (local_project / "both.png").read_bytes()[:4] == b"\x89PNG"
    pulled = run_gpurun(local_project, "pull")
    assert pulled.returncode == 0, pulled.stderr
    dest = local_project / "tasks" / "demo" / "runs" / latest_run_id(local_project)
    assert (dest / "loss.png").stat().st_size > 0
    (offline,) = (dest / "trackers" / "wandb").glob("offline-run-*")
    assert f"upload it with: wandb sync tasks/demo/runs/{dest.name}/trackers/wandb/{offline.name}" in pulled.stdout


def test_an_error_is_json_on_stdout_too_with_its_exit_code(local_project):
    strict = run_gpurun(local_project, "validate", "tasks/demo", *CUT, "--strict", "--json")
    assert strict.returncode == 1
    said = json.loads(strict.stdout)  # one document: the error, its details the warnings
    assert said["error"].startswith("--strict: ") and said["exit_code"] == 1 and said["hint"] and said["details"]
    assert "Error: --strict" in strict.stderr

    missing = run_gpurun(local_project, "status", "nosuchrun", "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"], missing.stdout + missing.stderr
