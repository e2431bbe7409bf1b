"""Which checkpoints are whole. A checkpoint is complete once the trainer has finished writing it
and we have dropped a marker in it; a folder without the marker (killed mid-save) is never resumed."""

import re
from pathlib import Path

COMPLETE_MARKER = ".gpurun-complete"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(checkpoint: Path) -> None:
    if checkpoint.is_dir():
        (checkpoint / COMPLETE_MARKER).write_text("ok\n")


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    if not Path(output_dir).is_dir():
        return None
    complete = [
        (int(m.group(1)), p)
        for p in Path(output_dir).iterdir()
        if (m := _STEP.match(p.name)) and (p / COMPLETE_MARKER).is_file() and (p / "trainer_state.json").is_file()
    ]
    return max(complete)[1] if complete else None
