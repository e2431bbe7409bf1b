"""The trackers task.yaml's `report:` names besides TensorBoard (transformers' own): W&B, trackio and MLflow, fed from
the run's events as they are written, each into the run's trackers/ folder so that `gpurun pull` brings it home.

Each gets the resolved config with the run id, experiment and `--set`s; every logged step's loss, learning rate and
grad norm; eval losses; the eval suite's scores; the sample generations as a table. events.jsonl stays the source of
truth: a tracker that fails says so once in train.log and is dropped, and the run goes on.

W&B runs online when WANDB_API_KEY reached the job (it travels as a secret), else offline, with the `wandb sync` line
to upload it later; trackio never creates a Space (space_id unset); MLflow keeps its SQLite store in the folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

from trainer.rundir import TRACKERS_DIR

TRAIN_KEYS = {"loss": "train/loss", "learning_rate": "train/learning_rate", "grad_norm": "train/grad_norm"}
SUITE_KEYS = ("accuracy", "name_accuracy", "arguments_accuracy", "baseline_accuracy", "baseline_arguments_accuracy")


class Trackers:
    """Listens to the run's EventWriter; `close()` ends every tracker whatever way the run ends."""

    def __init__(self, report: list[str], context: dict, run_dir: Path, say=print):
        self.folder = run_dir / TRACKERS_DIR
        self.context, self.say, self.output = context, say, run_dir / "output"
        kinds = {"wandb": Wandb, "trackio": Trackio, "mlflow": MLflow}
        self.live = []
        for name in report:
            if name in kinds:
                tracker = kinds[name]()
                if self._safely(tracker, "start", self.folder, context):
                    self.live.append(tracker)

    def on_event(self, event: dict) -> None:
        kind, step = event.get("kind"), event.get("step")
        if kind in ("log", "eval"):
            metrics = metrics_of(event)
            if metrics:
                self._each("log", metrics, step)
        elif kind == "eval_suite":
            self._each("summary", {f"suite/{k}": event[k] for k in SUITE_KEYS if event.get(k) is not None})
        elif kind == "done":
            self._each("table", "samples", sample_rows(self.output / "samples.jsonl"))
            self.close()

    def close(self) -> None:
        for tracker in list(self.live):
            self._safely(tracker, "finish")
        self.live = []

    def _each(self, method: str, *args) -> None:
        for tracker in list(self.live):
            self._safely(tracker, method, *args)

    def _safely(self, tracker, method: str, *args) -> bool:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # their banners are not for train.log
                note = getattr(tracker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - any failure of a tracker: said once, the run goes on
            failed = f"{method} failed ({type(exc).__name__}: {exc})"
            self.say(f"warning: {tracker.name}: {failed}; no more figures go there, events.jsonl keeps them all")
            if tracker in self.live:
                self.live.remove(tracker)
            return False
        if note:
            self.say(f"{tracker.name}: {note}")
        return True


def metrics_of(event: dict) -> dict:
    """A log or eval event's figures under the trackers' names: train/loss, eval/loss, eval/..."""
    metrics = {}
    for key, value in event.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or key in ("t", "step", "total_steps"):
            continue
        if key in TRAIN_KEYS:
            metrics[TRAIN_KEYS[key]] = value
        elif key.startswith("eval_"):
            metrics["eval/" + key.removeprefix("eval_")] = value
    return metrics


def sample_rows(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def table_of(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, data) of sample rows; a structured value (an expected tool call) as its JSON text."""
    columns = list(rows[0])
    cell = lambda v: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v  # noqa: E731
    return columns, [[cell(row.get(c)) for c in columns] for row in rows]


def flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Wandb:
    name = "wandb"

    def start(self, folder: Path, context: dict) -> str:
        import wandb

        online = bool(os.environ.get("WANDB_API_KEY"))
        # Quiet for good, not just during init: TRL's model card asks wandb.run for its URL, which an offline run
        # answers with a warning in train.log.
        os.environ.setdefault("WANDB_SILENT", "true")
        config = context["config"]
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=config["wandb"]["project"] or context["task"],
            entity=config["wandb"]["entity"] or None,
            name=config["wandb"]["name"] or context["name"],
            tags=[*config["wandb"]["tags"], *([context["experiment"]] if context["experiment"] else [])],
            id=context["run_id"],  # a restart of the run (out of memory, a Slurm requeue) continues it
            resume="allow",
            config={**config, "gpurun": {k: context[k] for k in ("run_id", "task", "experiment", "overrides")}},
            dir=str(folder),
            mode="online" if online else "offline",
            settings=settings,
        )
        if online:
            return f"logging to {self.run.url}"
        return f"offline (no WANDB_API_KEY reached the job): {Path(self.run.dir).parent}"

    def log(self, metrics: dict, step) -> None:
        self.run.log(metrics, step=step)

    def summary(self, figures: dict) -> None:
        self.run.summary.update(figures)

    def table(self, key: str, rows: list[dict]) -> None:
        import wandb

        if rows:
            self.run.log({key: wandb.Table(*table_of(rows))})

    def finish(self) -> None:
        self.run.finish()


class Trackio:
    name = "trackio"

    def start(self, folder: Path, context: dict) -> str:
        wanted = folder / "trackio"
        os.environ["TRACKIO_DIR"] = str(wanted)  # read once, when trackio is imported (run.py sets it up front)
        import trackio
        import trackio.utils

        if Path(trackio.utils.TRACKIO_DIR) != wanted:  # imported before (TRL imports it): it would write elsewhere
            found = trackio.utils.TRACKIO_DIR
            raise RuntimeError(f"trackio was imported before its folder was set; it writes to {found}")

        self.trackio = trackio
        trackio.init(
            project=context["task"], name=context["name"], config=flat(context["config"]) | {
                "run_id": context["run_id"], "experiment": context["experiment"], "overrides": context["overrides"]},
            space_id=None, embed=False, auto_log_gpu=False, auto_log_cpu=False,
        )  # fmt: skip
        return f"local; see it with: TRACKIO_DIR={wanted} trackio show --project {context['task']}"

    def log(self, metrics: dict, step) -> None:
        self.trackio.log(metrics, step=step)

    def summary(self, figures: dict) -> None:
        if figures:
            self.trackio.log(figures)

    def table(self, key: str, rows: list[dict]) -> None:
        if rows:
            self.trackio.log({key: self.trackio.Table(*table_of(rows))})

    def finish(self) -> None:
        self.trackio.finish()


class MLflow:
    name = "mlflow"

    def start(self, folder: Path, context: dict) -> str:
        import logging

        import mlflow

        # MLflow gives its logger a handler of its own on stderr (train.log): its INFO lines go where the other
        # libraries' go instead (debug.log, trainer/training/quiet.py).
        mlflow_log = logging.getLogger("mlflow")
        mlflow_log.handlers, mlflow_log.propagate = [], True
        folder.mkdir(parents=True, exist_ok=True)
        self.mlflow = mlflow
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        experiment = mlflow.get_experiment_by_name(context["task"])
        experiment_id = (
            experiment.experiment_id
            if experiment
            else mlflow.create_experiment(context["task"], artifact_location=(folder / "mlartifacts").as_uri())
        )
        mlflow.start_run(
            experiment_id=experiment_id, run_name=context["name"], tags={"gpurun.run_id": context["run_id"]}
        )
        params = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flat(context["config"]).items()}
        params.update(experiment=context["experiment"] or "", overrides=" ".join(context["overrides"]))
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        return f"local; see it with: mlflow ui --backend-store-uri sqlite:///{folder / 'mlflow.db'}"

    def log(self, metrics: dict, step) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def summary(self, figures: dict) -> None:
        if figures:
            self.mlflow.log_metrics(figures)

    def table(self, key: str, rows: list[dict]) -> None:
        if rows:
            self.mlflow.log_dict(rows, f"{key}.json")

    def finish(self) -> None:
        self.mlflow.end_run()
