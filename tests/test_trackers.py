"""task.yaml's `report:` (issue 16 item 1): W&B (offline, no network), trackio and MLflow get the config, each step's
loss, the eval losses, the eval suite's scores and the samples, read back here with each one's own formats and APIs;
a tracker that fails never fails the run; seed 003's `logging.wandb` block is translated."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_recipes import CHAT, events_of, lay_out_run, train_recipe
from trainer.host.interpreter import TRACKER_MODULES, missing_trackers
from trainer.task.loading import config_from_dict
from trainer.training import trackers

SUITE = [{**row, "expected_function": "get_leave_balance"} for row in CHAT[:3]]  # as test_recipes' suite


def wandb_records(path: Path):
    """The records of a .wandb transaction log, parsed with wandb's own protobuf definitions. The file is a
    LevelDB-style log: a 7-byte header (':W&B', magic, version), then 32 KiB blocks of chunks (crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B", data[:8]
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


@pytest.fixture(scope="module")
def reported(tmp_path_factory, model_cache):
    # In a Python of its own, as on a host: this worker may have imported trackio already (TRL imports it with the
    # preference trainers), with its folder fixed then.
    tmp = tmp_path_factory.mktemp("trackers")
    run_dir = lay_out_run(
        tmp,
        {"train.jsonl": CHAT, "suite.jsonl": SUITE},
        data={"train": ["train.jsonl"], "eval_split": 0.25},
        eval_suite={
            "file": "suite.jsonl",
            "max_new_tokens": 8,
            "expected_field": "expected_function",
            "json_field": "name",
        },
        report=["tensorboard", "wandb", "trackio", "mlflow"],
        wandb={"project": "hr-routing", "tags": ["seed-003"]},
        training={"max_steps": 3, "eval_strategy": "steps", "eval_steps": 3, "save_steps": 3},
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("TRACKIO_DIR", None)
    ran = subprocess.run([sys.executable, "-m", "trainer", "run", str(run_dir)], env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    (run_dir / "train.log").write_text(ran.stdout + ran.stderr)  # what the wrapper would have written there
    return run_dir


def test_wandb_offline_holds_the_config_losses_suite_and_samples(reported):
    train_log = (reported / "train.log").read_text() if (reported / "train.log").exists() else ""
    runs = list((reported / "trackers" / "wandb").glob("offline-run-*/run-r1.wandb"))
    assert len(runs) == 1, list((reported / "trackers").rglob("*"))[:20]
    history, config, summary, tables = [], {}, {}, []
    for record in wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.append(row)
            tables += [k.removesuffix("/_type") for k, v in row.items() if k.endswith("/_type") and v == "table-file"]
        elif kind in ("run", "config"):  # the config comes with the run record, and later updates
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})  # fmt: skip
    losses = [row["train/loss"] for row in history if "train/loss" in row]
    logged = [e["loss"] for e in events_of(reported) if e["kind"] == "log" and "loss" in e]
    assert losses == pytest.approx(logged) and len(losses) >= 3, (history, train_log)
    assert any("eval/loss" in row for row in history), history
    assert config["base_model"] == "builtin:tiny" and config["gpurun"]["run_id"] == "r1", config
    assert summary.get("suite/accuracy") is not None, summary
    assert tables == ["samples"], history


def test_trackio_and_mlflow_read_back_with_their_own_apis(reported):
    # Each in a fresh Python: trackio fixes its store's folder when it is imported.
    folder = reported / "trackers"
    trackio = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
logs = SQLiteStorage.get_logs("t", "r1")
print(json.dumps({"losses": [r["train/loss"] for r in logs if "train/loss" in r],
                  "suite": [r["suite/accuracy"] for r in logs if "suite/accuracy" in r],
                  "config": SQLiteStorage.get_run_config("t", "r1")}))
"""
    env = {"TRACKIO_DIR": str(folder / "trackio"), "PATH": "/usr/bin:/bin"}
    read = subprocess.run([sys.executable, "-c", trackio], env=env, capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    got = json.loads(read.stdout.strip().splitlines()[-1])
    logged = [e["loss"] for e in events_of(reported) if e["kind"] == "log" and "loss" in e]
    assert got["losses"] == pytest.approx(logged) and got["suite"], got
    assert got["config"]["base_model"] == "builtin:tiny" and got["config"]["run_id"] == "r1", got["config"]

    said = (reported / "train.log").read_text()
    assert f"trackio: local; see it with: TRACKIO_DIR={folder / 'trackio'} trackio show --project t" in said, said
    assert f"mlflow ui --backend-store-uri sqlite:///{folder / 'mlflow.db'}" in said, said
    assert "mlflow.store" not in said and "INFO" not in said, said  # MLflow's own log lines go to debug.log

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(logged)
    assert run.data.params["base_model"] == "builtin:tiny" and run.data.tags["gpurun.run_id"] == "r1"
    assert "suite/accuracy" in run.data.metrics and "eval/loss" in run.data.metrics, run.data.metrics
    assert run.info.status == "FINISHED"
    samples = json.loads(Path(run.info.artifact_uri.removeprefix("file://"), "samples.json").read_text())
    assert samples and {"prompt", "generated"} <= set(samples[0]), samples


def test_a_tracker_that_fails_is_said_once_and_the_run_goes_on(tmp_path, monkeypatch):
    said = []

    def broken(self, folder, context):
        raise RuntimeError("no route to api.wandb.ai")

    monkeypatch.setattr(trackers.Wandb, "start", broken)
    run_dir = train_recipe(tmp_path, {"train.jsonl": CHAT}, report=["wandb"], samples=0)
    assert events_of(run_dir)[-1]["kind"] == "done"
    live = trackers.Trackers(["wandb"], {}, tmp_path, said.append)
    live.on_event({"kind": "log", "step": 1, "loss": 1.0})
    assert live.live == [] and len(said) == 1 and "events.jsonl keeps them all" in said[0], said
    # trackio imported before its folder was set (TRL's preference trainers import it) would write elsewhere: said.
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "elsewhere"))
    import trackio  # noqa: F401

    if "trackio.utils" in sys.modules and str(sys.modules["trackio.utils"].TRACKIO_DIR) != str(tmp_path / "trackio"):
        trackers.Trackers(["trackio"], {"task": "t", "name": "r1", "config": {}}, tmp_path / "other-run", said.append)
        assert "imported before its folder was set" in said[-1], said


def test_seed_003s_logging_wandb_block_is_translated_and_a_missing_tracker_is_refused(monkeypatch):
    notices = []
    raw = {"base_model": "builtin:tiny", "data": {"train": ["a.jsonl"]}}
    config = config_from_dict({**raw, "logging": {"wandb": {"enabled": True, "project": "hr", "entity": "team"}}},
                              notices=notices)  # fmt: skip
    assert config.report == ["tensorboard", "wandb"] and config.wandb.project == "hr", config
    assert "`logging.wandb` is now `wandb`" in notices[0], notices
    named = config_from_dict({**raw, "logging": {"wandb": {"name": "hr-routing-v2"}}})  # an overlay's: no report
    assert named.report == ["tensorboard"] and named.wandb.name == "hr-routing-v2"
    with pytest.raises(Exception, match="not a tracker gpurun reports to"):
        config_from_dict({**raw, "report": ["wandbb"]})
    monkeypatch.setitem(TRACKER_MODULES, "mlflow", "no_such_module_here")
    assert missing_trackers(sys.executable, ["tensorboard", "mlflow", "wandb"]) == ["mlflow"]
    other = "/usr/bin/python3"  # another Python, asked in a subprocess: Debian's has none of them
    if Path(other).exists():
        assert missing_trackers(other, ["wandb", "tensorboard"]) == ["wandb"]


def test_start_refuses_a_tracker_the_training_python_lacks_before_the_run_exists(tmp_path, monkeypatch, capsys):
    import io

    from trainer.host import start

    monkeypatch.setitem(TRACKER_MODULES, "wandb", "no_such_module_here")
    run = {"run_id": "r1", "host": "a100", "config": {"report": ["tensorboard", "wandb"]}}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"run": run, "env": {}})))
    run_dir = tmp_path / "runs" / "r1"
    assert start.cmd_start([str(run_dir)]) == 1
    said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert said["error"].startswith("report: wandb is not installed in "), said
    assert said["hint"].startswith("gpurun setup --host a100 --with wandb"), said
    assert not run_dir.exists()  # nothing started, nothing to find
