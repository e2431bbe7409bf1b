"""The trainer processes' own records of how they ended (trainer_exit, trainer_exit.rankN). Standard library only.

Each trainer writes its record on its way out (trainer/training/run.py), so the run's state stays truthful
when the wrapper, which writes exit_code, was killed alone: the records then say how the job ended.
"""

import json
import time
from pathlib import Path

from trainer.host.files import read_or_none, write_atomic
from trainer.rundir import TRAINER_EXIT_FILE


def trainer_exit_name(rank: int) -> str:
    return TRAINER_EXIT_FILE if rank == 0 else f"{TRAINER_EXIT_FILE}.rank{rank}"


def write_trainer_exit(run_dir: Path, rank: int, code: int) -> None:
    """The trainer's own last word (written by trainer/training/run.py on its way out), for when no wrapper survives to
    write exit_code. On a full disk the file may fail to appear: the run is then lost, which is the truth."""
    try:
        write_atomic(Path(run_dir) / trainer_exit_name(rank), json.dumps({"code": code, "t": time.time()}))
    except OSError:
        pass


def trainers_ended(run_dir: Path, processes: int) -> dict | None:
    """{"code", "t"} merged from every trainer process's own record as the wrapper would (the first failure's code,
    else 0), or None when some process left no record and none recorded a failure: then nothing says how it ended."""
    records, missing = [], False
    for rank in range(processes):
        try:
            records.append(json.loads(read_or_none(run_dir / trainer_exit_name(rank)) or ""))
        except ValueError:
            missing = True
    failures = sorted((r for r in records if r.get("code")), key=lambda r: r.get("t", 0))
    if failures:
        return failures[0]
    if missing or not records:
        return None
    return max(records, key=lambda r: r.get("t", 0))
