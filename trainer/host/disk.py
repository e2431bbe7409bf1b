"""Disk space on the host: free bytes, the run's reserve, and saying that the disk filled up. Standard library only.

Each run keeps RESERVE_BYTES of real blocks (RESERVE_FILE) from its start, given back only to write how the
job ended when the disk is full: a run never ends without a word because the disk had no room for one.
"""

import errno
import os
from pathlib import Path

from trainer.checkpoints import latest_complete_checkpoint
from trainer.events import EventWriter
from trainer.rundir import EVENTS_FILE, LOG_FILE, OUTPUT_DIR, RESERVE_FILE
from trainer.sizes import human_bytes

RESERVE_BYTES = 1 << 20
FULL_BELOW_BYTES = 1 << 20  # less free than this after a failure: the disk filled up
NO_SPACE = "no space left on device"


def free_bytes(path: Path) -> int:
    """Free bytes for this user on the filesystem holding path (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def write_reserve(run_dir: Path) -> None:
    """Real blocks (not a sparse file), synced to disk, released only to write how the job ended on a full disk."""
    with open(Path(run_dir) / RESERVE_FILE, "wb") as fh:
        fh.write(bytes(RESERVE_BYTES))
        fh.flush()
        os.fsync(fh.fileno())


def release_reserve(run_dir: Path) -> None:
    try:
        (Path(run_dir) / RESERVE_FILE).unlink()
    except FileNotFoundError:
        pass


def is_disk_full(exc: BaseException, run_dir: Path) -> bool:
    """Whether a failure was the disk filling up: ENOSPC anywhere in the chain, or (torch's C++ writer says only
    "file write failed") a disk with next to nothing left."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if NO_SPACE in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return free_bytes(run_dir) < FULL_BELOW_BYTES


def note_disk_full(run_dir: Path, path: str | None) -> str:
    """Say in train.log and events.jsonl that the disk is full, and where; the reserve makes room to say it."""
    run_dir = Path(run_dir)
    workdir = run_dir.parent.parent
    free = free_bytes(run_dir)  # what the run had left, measured before the reserve is given back
    release_reserve(run_dir)
    message = f"{NO_SPACE}: could not write {path or run_dir} ({human_bytes(free)} free in {workdir})"
    hint = f"free some space in {workdir} (or lower training.save_total_limit), then train again"
    if latest_complete_checkpoint(run_dir / OUTPUT_DIR) is not None:
        hint += f"; `gpurun train --resume {run_dir.name}` continues from its last complete checkpoint"
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as log:
        log.write(f"error: {message}\nhint: {hint}\n")
    EventWriter(run_dir / EVENTS_FILE).emit("error", message=message, hint=hint, problems=[message])
    return message
