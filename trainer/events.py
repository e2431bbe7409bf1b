"""events.jsonl: the contract between the trainer and the launcher's `logs -f` and `status`. Standard library only:
the host side (trainer/host/) writes events too; what a training run emits is trainer/training/callbacks.py's.

One JSON object per line, appended and flushed at once, so a reader following byte offsets
never sees half a record (it only consumes up to the last newline).
    {"t": 1700000000.0, "kind": "log"|"eval"|"save"|"start"|"done"|"error"|"alarm", "step": 10, "total_steps": 60, ...}
After the last step, work that takes a while reports itself as it goes:
    {"t": ..., "kind": "phase", "phase": "saving"|"samples"|"eval_suite"|"baseline", "done": 2, "total": 4}
"""

import json
import math
import time
from pathlib import Path


class EventWriter:
    """Appends events to events.jsonl; `path=None` (a DDP worker other than rank 0) writes nothing."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self.listeners: list = []  # called with each record written (the trackers of task.yaml's `report:`)

    def emit(self, kind: str, **fields) -> dict:
        record = {"t": round(time.time(), 3), "kind": kind, **{k: _jsonable(v) for k, v in fields.items()}}
        if self.path is None:
            return record
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
        for listener in self.listeners:
            listener(record)
        return record


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan"/"inf": JSON has no literal for them, the launcher alarms on these
    return value
