"""`python -m trainer summary RUN_DIR...`: one JSON line per run with what `gpurun compare` puts side by side: its
resolved config, steps, final train loss, final and best eval loss, eval-suite scores, training time, peak GPU
memory and the pre-flight's estimate, all from run.json and events.jsonl; and its curve (each log and eval event's
step, losses and learning rate) for `gpurun plot`. Standard library only.
"""

import json
from pathlib import Path

from trainer.rundir import EVENTS_FILE, RUN_FILE


def cmd_summary(args: list[str]) -> int:
    for name in args:
        print(json.dumps(run_summary(Path(name))), flush=True)
    return 0


def run_summary(run_dir: Path) -> dict:
    out: dict = {"run_id": run_dir.name}
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {**out, "state": "not_found"}
    out.update(config=record.get("config", {}), experiment=record.get("experiment"))
    out["overrides"] = record.get("overrides", [])
    estimate = (record.get("memory") or {}).get("total")  # the pre-flight's, per process (trainer/training/run.py)
    out["memory_estimate_gb"] = round(estimate / 2**30, 2) if isinstance(estimate, (int, float)) else None
    evals, peak, curve = [], None, []
    try:
        lines = (run_dir / EVENTS_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        kind = event.get("kind")
        point = curve_point(event)
        if point is not None:
            curve.append(point)
        if "step" in event:
            out["step"] = event["step"]
        if kind == "log" and "loss" in event:
            out["train_loss"] = event["loss"]
        if kind == "eval" and "eval_loss" in event:
            evals.append(event["eval_loss"])
        if kind == "summary":
            out["train_runtime"] = event.get("train_runtime")
        if event.get("peak_mem_gb") is not None:
            peak = max(peak or 0.0, event["peak_mem_gb"])
        if kind == "eval_suite":
            for key in ("accuracy", "arguments_accuracy", "baseline_accuracy", "baseline_arguments_accuracy"):
                out[key] = event.get(key)
    if evals:
        out["eval_loss"], out["best_eval_loss"] = evals[-1], min(evals)
    out["peak_mem_gb"] = peak
    out["curve"] = curve
    return out


def curve_point(event: dict) -> dict | None:
    """What `gpurun plot` draws of an event (and the health alarms it marks): a log's or an eval's step, losses
    and learning rate; None for any other event."""
    if event.get("kind") not in ("log", "eval"):
        return None
    keep = ("step", "loss", "eval_loss", "learning_rate")
    return {"kind": event["kind"], **{k: event[k] for k in keep if k in event}}
