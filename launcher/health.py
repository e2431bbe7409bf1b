"""Health alarms from the event stream, after seed 000's monitoring table.

    train loss  healthy: falls steadily      alarm: NaN/inf, rising, oscillating, flat (plateau)
    eval loss   healthy: flat or falling     alarm: rising N evaluations in a row (overfitting)

Pure: feed events, get the alarms that became true. Each alarm fires once per run, so a
replay after a reconnect (or `logs -f` on a finished run) shows the same alarms again.
"""

import math
from dataclasses import dataclass, field

WINDOW = 10  # train-loss logs looked at for rising / oscillating
PLATEAU_WINDOW = 30  # train-loss logs with no real improvement before we call it a plateau
PLATEAU_GAIN = 0.01  # "real improvement": the best loss fell by at least 1 %
EVAL_RISES = 3  # eval loss up this many evaluations in a row -> overfitting


@dataclass
class Health:
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    saves: dict[int, str] = field(default_factory=dict)
    fired: set[str] = field(default_factory=set)

    def feed(self, event: dict) -> list[str]:
        """Update with one event; return the alarms it raised (each alarm at most once)."""
        kind, step = event.get("kind"), event.get("step")
        alarms: list[tuple[str, str]] = []
        if kind == "save" and step is not None:
            self.saves[step] = event.get("checkpoint") or f"checkpoint-{step}"
        if kind == "log" and "loss" in event:
            loss = _number(event["loss"])
            if not math.isfinite(loss):
                alarms.append(("nan", f"loss is {event['loss']} at step {step}: lower the learning rate or check data"))
            else:
                self.losses.append(loss)
                alarms += self._train_alarms(step)
        if kind == "eval" and "eval_loss" in event:
            value = _number(event["eval_loss"])
            if not math.isfinite(value):
                alarms.append(("eval_nan", f"eval loss is {event['eval_loss']} at step {step}"))
            else:
                self.evals.append((step, value))
                alarms += self._eval_alarms()
        new = [text for key, text in alarms if key not in self.fired]
        self.fired.update(key for key, _ in alarms)
        return new

    def _train_alarms(self, step) -> list[tuple[str, str]]:
        out = []
        window = self.losses[-WINDOW:]
        if len(window) == WINDOW:
            half = WINDOW // 2
            early, late = sum(window[:half]) / half, sum(window[half:]) / half
            if late > early * 1.10:
                out.append(("rising", f"train loss rising ({early:.3g} -> {late:.3g}) by step {step}: lower the LR"))
            diffs = [b - a for a, b in zip(window, window[1:], strict=False)]
            flips = sum(1 for a, b in zip(diffs, diffs[1:], strict=False) if a * b < 0)
            swing = max(window) - min(window)
            if flips >= len(diffs) - 2 and swing > 0.25 * (sum(window) / WINDOW):
                out.append(("oscillating", f"train loss oscillating by step {step}: lower the LR or add warmup"))
        if len(self.losses) >= PLATEAU_WINDOW + 1:
            before = min(self.losses[:-PLATEAU_WINDOW])
            recent = min(self.losses[-PLATEAU_WINDOW:])
            if recent > before * (1 - PLATEAU_GAIN):
                out.append(("plateau", f"no improvement in the last {PLATEAU_WINDOW} logged steps (plateau)"))
        return out

    def _eval_alarms(self) -> list[tuple[str, str]]:
        if len(self.evals) < EVAL_RISES + 1:
            return []
        recent = [value for _, value in self.evals[-(EVAL_RISES + 1) :]]
        if not all(b > a for a, b in zip(recent, recent[1:], strict=False)):
            return []
        best_step, best = min(self.evals, key=lambda item: item[1])
        checkpoint = self.saves.get(best_step)
        where = f"best checkpoint: {checkpoint} (eval loss {best:.4g})" if checkpoint else f"best at step {best_step}"
        return [("overfitting", f"eval loss rose {EVAL_RISES} evaluations in a row: overfitting; {where}")]


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
