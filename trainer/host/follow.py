"""`python -m trainer follow RUN_DIR LOG_OFFSET EVENTS_OFFSET [once]`: a run's new log and events, streamed.
Standard library only.

    follow RUN_DIR LOG EV [once]  stream new train.log bytes and events from byte offsets until the job ends
"""

import json
import time
from pathlib import Path

from trainer.host.files import reply
from trainer.host.state import run_state
from trainer.rundir import EVENTS_FILE, LOG_FILE, RUN_FILE

POLL_S = 0.2
HEARTBEAT_S = 5.0  # a line this often while nothing happens: the launcher sees a dropped connection


def cmd_follow(args: list[str]) -> int:
    """Stream {"log": text, "log_offset": n}, {"event": {...}, "events_offset": n}, then {"end": state}.

    Offsets are byte offsets after the data sent; the launcher reconnects with the last ones it
    saw, so after a dropped connection every line and event is shown exactly once. Only whole
    lines are ever sent.
    """
    run_dir, log_offset, events_offset = Path(args[0]), int(args[1]), int(args[2])
    once = args[3:] == ["once"]  # `gpurun logs` without -f: what there is now, then the state
    if log_offset < 0:  # `--tail N`: start N lines before the end
        log_offset = _tail_offset(run_dir / LOG_FILE, -log_offset)
    if not (run_dir / RUN_FILE).exists():
        reply({"end": {"state": "not_found", "run_id": run_dir.name}})
        return 0
    last_beat, said = 0.0, None
    while True:
        state = run_state(run_dir)  # read before draining: anything written before the end is sent
        log_offset = _send_new(run_dir / LOG_FILE, log_offset, "log")
        events_offset = _send_new(run_dir / EVENTS_FILE, events_offset, "events")
        if state.get("queued") != said and (state.get("queued") or said):  # a Slurm job's wait, said once
            reply({"status": state.get("queued") or f"running: job {state.get('job_id')} started"})
            said = state.get("queued")
        if state["state"] not in ("running", "queued") or once:
            reply({"end": state})
            return 0
        if time.time() - last_beat > HEARTBEAT_S:
            reply({"beat": time.time()})
            last_beat = time.time()
        time.sleep(POLL_S)


def _tail_offset(path: Path, lines: int) -> int:
    """The byte offset where the file's last `lines` whole lines begin."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    end = data.rfind(b"\n")  # only whole lines count
    if end < 0:
        return 0
    position = end
    for _ in range(lines):
        position = data.rfind(b"\n", 0, position)
        if position < 0:
            return 0
    return position + 1


def _send_new(path: Path, offset: int, kind: str) -> int:
    """Reply with the whole lines written after offset (up to 1 MiB); returns the offset after them."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(1 << 20)
    except OSError:
        return offset
    end = data.rfind(b"\n")
    if end < 0:
        return offset
    chunk = data[: end + 1]
    offset += len(chunk)
    text = chunk.decode("utf-8", "replace")
    if kind == "log":
        reply({"log": text, "log_offset": offset})
    else:
        events = []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        reply({"events": events, "events_offset": offset})
    return offset
