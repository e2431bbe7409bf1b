"""The host commands' plain file and reply helpers. Standard library only.

Every host command answers the launcher with JSON lines on stdout (`reply`), and writes the run's
files so that a reader never sees half of one (`write_atomic`).
"""

import json
import os
import sys
from pathlib import Path


def reply(obj: dict) -> None:
    """One JSON line to the launcher, flushed at once: it reads them as they come."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def read_or_none(path: Path) -> str | None:
    """The file's text, or None when it cannot be read (absent, or gone meanwhile)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def write_atomic(path: Path, text: str) -> None:
    """Write the whole file or nothing: a temporary file, synced, then renamed over path."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
