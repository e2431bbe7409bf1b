"""A run's state from the files the host keeps, and `python -m trainer state RUN_DIR...`. Standard library only.

    state RUN_DIR...         one JSON line per run: state, exit code, progress

The wrapper's exit_code when it wrote one; else `running` while any process of the job lives (or Slurm
says the job is not over); else how the trainers themselves said they ended; else `lost`.
"""

import json
import os
import time
from pathlib import Path

from trainer.host.exits import trainers_ended
from trainer.host.files import read_or_none
from trainer.host.processes import job_alive, read_pid_file
from trainer.host.slurm import slurm_state
from trainer.host.torchrun import process_count, trainer_processes
from trainer.rundir import EVENTS_FILE, EXIT_FILE, RUN_FILE, STOP_FILE

STARTING_GRACE_S = 30.0  # a run without a pid file this young is still starting, not lost
EVENTS_TAIL_BYTES = 65536  # the events read for progress: the latest ones are at the end


def cmd_state(args: list[str]) -> int:
    for name in args:
        print(json.dumps(run_state(Path(name))), flush=True)
    return 0


def run_state(run_dir: Path) -> dict:
    """The run's state from the files the host keeps: the wrapper's exit_code when it wrote one; else `running`
    while any process of the job lives; else how the trainers themselves said they ended; else `lost`."""
    run_dir = Path(run_dir)
    out: dict = {"run_id": run_dir.name}
    if not (run_dir / RUN_FILE).exists():
        out["state"] = "not_found"
        return out
    record: dict = {}
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        out.update(task=record.get("task"), started_at=record.get("started_at"), gpus=record.get("gpus"))
    except (OSError, ValueError):
        pass
    young = time.time() - (run_dir / RUN_FILE).stat().st_mtime < STARTING_GRACE_S
    if record.get("slurm") is not None:
        live = slurm_state(run_dir, record, young)  # queued or running while Slurm says the job is not over
        if live is not None:
            out.update(live)
            out.update(progress(run_dir / EVENTS_FILE))
            return out
    end = _wrapper_end(run_dir)
    if end is None:
        if _job_lives(run_dir, young):
            out["state"] = "running"
        else:
            end = _trainers_end(run_dir, record)  # the wrapper was killed, yet the trainers may have said how
            if end is None:
                out["state"] = "lost"
    if end is not None:
        out["exit_code"], out["ended_at"] = end
        if (run_dir / STOP_FILE).exists():
            out["state"] = "stopped"
        else:
            out["state"] = "succeeded" if end[0] == 0 else "failed"
    out.update(progress(run_dir / EVENTS_FILE))
    return out


def _wrapper_end(run_dir: Path) -> tuple[int, float] | None:
    """(exit code, when) from the exit_code file the wrapper writes however the job ends, or None."""
    exit_text = read_or_none(run_dir / EXIT_FILE)
    if exit_text is None or not exit_text.strip():
        return None
    return int(exit_text.strip()), (run_dir / EXIT_FILE).stat().st_mtime


def _job_lives(run_dir: Path, young: bool) -> bool:
    info = read_pid_file(run_dir)
    # torchrun's workers live in sessions of their own: the job lives while any of them does, too.
    return (info is None and young) or (info is not None and job_alive(info)) or bool(trainer_processes(run_dir))


def _trainers_end(run_dir: Path, record: dict) -> tuple[int, float | None] | None:
    ended = trainers_ended(run_dir, process_count(record.get("gpus")))
    return None if ended is None else (int(ended["code"]), ended.get("t"))


def tail_events(path: Path) -> list[dict]:
    """The events in the tail of events.jsonl (a torn or foreign line is skipped)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - EVENTS_TAIL_BYTES))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def progress(path: Path) -> dict:
    """Latest step / loss / eval loss from events.jsonl (reads only its tail)."""
    out: dict = {}
    for event in tail_events(path):
        for key in ("step", "total_steps"):
            if key in event:
                out[key] = event[key]
        if "loss" in event:
            out["loss"] = event["loss"]
        if "eval_loss" in event:
            out["eval_loss"] = event["eval_loss"]
        if event.get("kind") == "oom":  # the split it trains with since running out of memory
            out["split"] = f"{event.get('per_device_train_batch_size')}x{event.get('gradient_accumulation_steps')}"
        if event.get("kind") == "eval_suite":
            out["accuracy"] = event.get("accuracy")
            out["baseline_accuracy"] = event.get("baseline_accuracy")
            # a tool-call suite also scores the arguments (name right and arguments equal)
            out["arguments_accuracy"] = event.get("arguments_accuracy")
            out["baseline_arguments_accuracy"] = event.get("baseline_arguments_accuracy")
    return out


def has_event(run_dir: Path, kind: str, message_prefix: str = "") -> bool:
    """Whether events.jsonl's tail holds an event of this kind (and message)."""
    return any(
        event.get("kind") == kind and str(event.get("message", "")).startswith(message_prefix)
        for event in tail_events(run_dir / EVENTS_FILE)
    )
