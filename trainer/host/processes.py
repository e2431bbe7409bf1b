"""A job's processes on this host: the pid file, /proc, and signals to them. Standard library only.

The pid file holds the job's process group with a marker (the process's start time) and the boot id,
so that a pid the kernel handed to someone else after the job ended never passes for the job.
"""

import json
import os
from pathlib import Path

from trainer.host.files import read_or_none, write_atomic
from trainer.rundir import PID_FILE


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name: [0] state, [1] ppid, [2] pgrp, ..., [19] start time.
    None when the process is gone (or there is no /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_marker(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the boot id, no reused pid matches it."""
    fields = proc_stat(pid)
    return fields[19] if fields else None


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def write_pid_file(run_dir: Path, pid: int, pgid: int) -> None:
    info = {"pgid": pgid, "pid": pid, "marker": process_marker(pid), "boot_id": boot_id()}
    write_atomic(run_dir / PID_FILE, json.dumps(info))


def read_pid_file(run_dir: Path) -> dict | None:
    try:
        return json.loads(read_or_none(run_dir / PID_FILE) or "")
    except ValueError:
        return None


def group_members(pgid: int) -> dict[int, int]:
    """{pid: parent pid} of every live process in the process group (zombies are already dead)."""
    members = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                members[int(entry.name)] = int(fields[1])
    return members


def job_alive(info: dict) -> bool:
    """Whether any process of the job lives: the wrapper, or trainers it left behind when it was killed alone."""
    pid, pgid = info.get("pid"), info.get("pgid") or info.get("pid")
    if not isinstance(pid, int) or not isinstance(pgid, int):
        return False
    if info.get("boot_id") and info["boot_id"] != boot_id():
        return False  # the host rebooted since
    if not Path("/proc/self/stat").exists():  # no /proc (macOS host): does the group exist at all
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    marker = process_marker(pid)
    if marker is not None:
        # Linux never hands out a pid that is still some live process's group id: while our group lives, the
        # number is our wrapper's or nobody's. Anyone else holding it means our group ended and it was reused.
        return marker == info.get("marker")
    return bool(group_members(pgid))


def signal_each(pids: list[int], signum: int) -> None:
    """The signal to each process; one that is already gone is no error."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
