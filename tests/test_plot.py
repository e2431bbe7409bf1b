"""`gpurun plot`'s picture from a run's curve, and the health alarms it marks (launcher/plot.py)."""

from launcher.plot import alarm_marks, label_of, write_plot


def curve(losses: list[float], evals: dict[int, float]) -> list[dict]:
    points = [{"kind": "log", "step": i + 1, "loss": v, "learning_rate": 1e-3} for i, v in enumerate(losses)]
    points += [{"kind": "eval", "step": step, "eval_loss": v} for step, v in evals.items()]
    return sorted(points, key=lambda p: p["step"])


def test_the_alarms_are_marked_at_the_step_that_raised_them():
    rising = curve([1.0 - 0.01 * i for i in range(10)] + [1.5 + 0.1 * i for i in range(10)], {})
    marks = alarm_marks(rising)
    assert marks and marks[0][1].startswith("train loss rising") and 10 < marks[0][0] <= 20, marks
    overfit = curve([1.0] * 8, {2: 0.9, 4: 0.95, 6: 1.0, 8: 1.1})
    assert any("eval loss" in alarm for _, alarm in alarm_marks(overfit)), alarm_marks(overfit)


def test_runs_overlaid_in_one_png_labelled_by_their_settings(tmp_path):
    rows = [
        {
            "run_id": "hr-20260101-120000-ab12",
            "overrides": ["training.learning_rate=1e-4"],
            "curve": curve([2, 1.5, 1.2], {3: 1.3}),
        },
        {"run_id": "hr-20260101-130000-cd34", "experiment": "small-lr", "curve": curve([2, 1.9, 1.8], {3: 1.85})},
    ]
    assert label_of(rows[0]) == "ab12 --set training.learning_rate=1e-4" and label_of(rows[1]) == "cd34 --exp small-lr"
    path = write_plot(rows, tmp_path / "out" / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert not list(path.parent.glob("*.partial"))
