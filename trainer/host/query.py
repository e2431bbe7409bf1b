"""Host-side questions the launcher asks before it starts a run, and after a start it never heard back
from. Standard library only, like the other host commands.

    resume-info RUN_DIR      the parent of a `train --resume`: its run.json, state and latest complete checkpoint
    settle RUN_DIR...        for runs whose `start` the laptop never heard back from: their state, and for one
                             that is not on the host, a marker that makes sure it never starts later
"""

import json
import sys
import time
from pathlib import Path

from trainer.checkpoints import latest_complete_checkpoint
from trainer.host.state import run_state
from trainer.rundir import RUN_FILE

NOT_STARTED_FILE = "not_started"
# A run directory without run.json this old is a start that died between its mkdir and run.json.
HALF_MADE_S = 60.0


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "resume-info":
        return cmd_resume_info(rest)
    if command == "settle":
        return cmd_settle(rest)
    print(f"unknown command {command!r}; one of: resume-info, settle", file=sys.stderr)
    return 2


def cmd_resume_info(args: list[str]) -> int:
    run_dir = Path(args[0])
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        _reply({"state": "not_found", "run_id": run_dir.name})
        return 0
    checkpoint = latest_complete_checkpoint(run_dir / "output")
    state = run_state(run_dir)
    _reply(
        {
            "state": state.get("state"),
            "run_id": run_dir.name,
            "run": record,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_step": int(checkpoint.name.split("-")[1]) if checkpoint else None,
            "total_steps": state.get("total_steps"),
        }
    )
    return 0


def cmd_settle(args: list[str]) -> int:
    for name in args:
        _reply(settle(Path(name)))
    return 0


def settle(run_dir: Path) -> dict:
    """The state of a run whose start may or may not have happened; never 'not found'.

    `start` creates the run directory with an exclusive mkdir before anything runs, so taking the
    directory first (with a marker in it) decides the race: a start still on its way then fails on
    its mkdir, and the run can never begin after the laptop was told it did not.
    """
    if (run_dir / RUN_FILE).exists():
        return run_state(run_dir)
    out = {"run_id": run_dir.name, "state": "not_started"}
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        if (run_dir / NOT_STARTED_FILE).exists():
            return out
        if time.time() - run_dir.stat().st_mtime < HALF_MADE_S:
            return {"run_id": run_dir.name, "state": "starting"}  # start made it and is writing run.json
    (run_dir / NOT_STARTED_FILE).write_text(f"{time.time()}\n")
    return out


def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
