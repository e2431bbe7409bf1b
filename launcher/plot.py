"""`gpurun plot`: train and eval loss and the learning rate over steps as a PNG, several runs overlaid and labelled
by experiment and --set values, with seed 000's health alarms marked at the step they fired (launcher/health.py).
matplotlib is the laptop's `[plot]` extra, imported only here; `pull` draws `loss.png` for the run it fetched when
matplotlib is installed."""

from __future__ import annotations

import json
from pathlib import Path

from launcher.errors import GpurunError
from launcher.health import Health
from trainer.host.summary import curve_point


def alarm_marks(curve: list[dict]) -> list[tuple[int, str]]:
    """(step, alarm) for each health alarm, at the event that raised it."""
    health, marks = Health(), []
    for event in curve:
        for alarm in health.feed(event):
            marks.append((event.get("step") or 0, alarm))
    return marks


def label_of(row: dict) -> str:
    parts = [row["run_id"].rsplit("-", 1)[-1]]  # the id's last piece: short and unique enough beside the rest
    if row.get("experiment"):
        parts.append(f"--exp {row['experiment']}")
    parts += [f"--set {item}" for item in row.get("overrides") or []]
    return " ".join(parts)


def write_plot(rows: list[dict], path: Path) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise GpurunError("gpurun plot needs matplotlib", "pip install 'gpurun[plot]' (or matplotlib)") from None
    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    figure, (loss_axis, lr_axis) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, height_ratios=(3, 1))
    for index, row in enumerate(rows):
        color = f"C{index % 10}"
        curve = row.get("curve") or []
        train = [(e["step"], e["loss"]) for e in curve if e["kind"] == "log" and "loss" in e]
        evals = [(e["step"], e["eval_loss"]) for e in curve if e["kind"] == "eval" and "eval_loss" in e]
        rates = [(e["step"], e["learning_rate"]) for e in curve if "learning_rate" in e]
        label = label_of(row)
        if train:
            loss_axis.plot(*zip(*train, strict=True), color=color, label=f"{label} train")
        if evals:
            loss_axis.plot(*zip(*evals, strict=True), color=color, linestyle="--", marker="o", label=f"{label} eval")
        if rates:
            lr_axis.plot(*zip(*rates, strict=True), color=color)
        for step, alarm in alarm_marks(curve):
            loss_axis.axvline(step, color=color, alpha=0.3, linestyle=":")
            loss_axis.annotate(
                alarm.split(":")[0], (step, loss_axis.get_ylim()[1]), fontsize=7, rotation=90, va="top", color=color
            )
    loss_axis.set_ylabel("loss")
    loss_axis.legend(fontsize=8)
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_xlabel("step")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    figure.savefig(partial, format="png", dpi=110)
    plt.close(figure)
    partial.replace(path)
    return path


def curve_from_events(events_file: Path) -> list[dict]:
    """A pulled run's curve, from its events.jsonl (as the host's summary gives it)."""
    curve = []
    for line in events_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        point = curve_point(event) if isinstance(event, dict) else None
        if point is not None:
            curve.append(point)
    return curve
