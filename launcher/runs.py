"""Run records: ids, the laptop's history (a cache; the host is the truth), which run a command means,
and state from the host.

History is sqlite from the standard library, in WAL mode with a busy timeout, so two terminals
(a `logs -f` and a `train`) can use it at once.
"""

import fcntl
import json
import secrets
import shlex
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import EXIT_LOST, EXIT_STOPPED, EXIT_USER, GpurunError
from launcher.hostcalls import fetch_states, settle_states
from launcher.hosts import resolve_host
from launcher.project import state_dir
from launcher.remote import Remote, remote_for

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, task TEXT NOT NULL, task_dir TEXT NOT NULL, host TEXT NOT NULL,
    trainer_root TEXT NOT NULL, started_at REAL NOT NULL, state TEXT, exit_code INTEGER,
    step INTEGER, total_steps INTEGER, loss REAL, eval_loss REAL, updated_at REAL, parent TEXT, accuracy REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# not_started: the laptop recorded the run, its start never answered, and the host made sure it never begins.
FINAL_STATES = ("succeeded", "failed", "stopped", "lost", "not_started")
STARTING = "starting"  # recorded before the host's start is called; settled by the next command


@dataclass
class RunRecord:
    run_id: str
    task: str
    task_dir: str  # the local task folder results are pulled into
    host: str
    trainer_root: str  # host path of the trainer copy this run uses
    started_at: float
    state: str | None = None
    exit_code: int | None = None
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    updated_at: float | None = None
    parent: str | None = None  # the run this one resumed
    accuracy: float | None = None  # the eval suite's, after training
    baseline_accuracy: float | None = None  # the same suite on the base model (the adapter switched off)
    arguments_accuracy: float | None = None  # a tool-call suite's: function name and arguments both right
    baseline_arguments_accuracy: float | None = None
    experiment: str | None = None  # --exp (a resumed run: its parent's)
    overrides: str | None = None  # the --set values in effect, a JSON list (a resumed run: its parent's + its own)
    split: str | None = None  # per-device batch x accumulation after running out of memory ("2x8"), else None

    def override_list(self) -> list[str]:
        try:
            return list(json.loads(self.overrides or "[]"))
        except ValueError:
            return []


def new_run_id(task: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
    return f"{task}-{stamp}-{secrets.token_hex(2)}"


class History:
    def __init__(self, root: Path):
        self.path = state_dir(root) / "history.sqlite"
        self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        # Switching a new database to WAL and creating its tables can fail at once with "database is
        # locked" when two gpuruns start together (sqlite's busy handler does not cover it), so the
        # setup runs under a lock file; everything after it is covered by the busy timeout.
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
            self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A history written by an older gpurun gains the newer columns (empty) instead of failing."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(runs)")}
        for name in RunRecord.__dataclass_fields__:
            if name not in have:
                self.db.execute(f"ALTER TABLE runs ADD COLUMN {name}")

    def add(self, record: RunRecord) -> None:
        fields = record.__dict__
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        self.db.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({marks})", tuple(fields.values()))

    def delete(self, run_id: str) -> None:
        self.db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def update_state(self, run_id: str, state: dict) -> None:
        self.db.execute(
            "UPDATE runs SET state=?, exit_code=?, step=?, total_steps=?, loss=?, eval_loss=?, accuracy=?, "
            "baseline_accuracy=?, arguments_accuracy=?, baseline_arguments_accuracy=?, split=?, updated_at=? "
            "WHERE run_id=?",
            (
                state.get("state"),
                state.get("exit_code"),
                state.get("step"),
                state.get("total_steps"),
                _num(state.get("loss")),
                _num(state.get("eval_loss")),
                _num(state.get("accuracy")),
                _num(state.get("baseline_accuracy")),
                _num(state.get("arguments_accuracy")),
                _num(state.get("baseline_arguments_accuracy")),
                state.get("split"),
                time.time(),
                run_id,
            ),
        )

    def get(self, run_id: str | None) -> RunRecord:
        """A run by id (or a unique prefix of one); None means the latest run."""
        if run_id is None:
            rows = self._select("ORDER BY started_at DESC LIMIT 1")
            if not rows:
                raise GpurunError("no runs yet in this project", "start one: gpurun train tasks/demo")
            return rows[0]
        rows = self._select("WHERE run_id = ? OR run_id LIKE ? ORDER BY started_at DESC", (run_id, f"{run_id}%"))
        exact = [r for r in rows if r.run_id == run_id]
        if exact:
            return exact[0]
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise GpurunError(f"no run {run_id!r} in this project", "list them with: gpurun runs")
        raise GpurunError(f"{run_id!r} matches {len(rows)} runs", "give more of the run id (gpurun runs)")

    def all(self, limit: int = 50) -> list[RunRecord]:
        return self._select("ORDER BY started_at DESC LIMIT ?", (limit,))

    def _select(self, clause: str, params: tuple = ()) -> list[RunRecord]:
        cursor = self.db.execute(f"SELECT * FROM runs {clause}", params)
        names = [c[0] for c in cursor.description]
        return [RunRecord(**dict(zip(names, row, strict=True))) for row in cursor.fetchall()]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def refresh_state(history: History, remote: Remote, record: RunRecord) -> dict:
    """Ask the host (the truth) for one run's state and cache it in the history."""
    if record.state in (STARTING, "not_started"):
        state = settle_states(remote, record.trainer_root, [record.run_id]).get(record.run_id, {})
    else:
        state = fetch_states(remote, record.trainer_root, [record.run_id]).get(record.run_id, {})
    history.update_state(record.run_id, state)
    return state


def refresh_runs(root: Path, history: History, limit: int, on_warning: Callable[[str], None]) -> list[RunRecord]:
    """The latest `limit` runs, each unfinished one's state asked of its host first: one round trip per host.
    A host that cannot be reached is told to `on_warning`; its runs keep their cached state."""
    by_host: dict[tuple[str, str, bool], list[str]] = {}
    for record in history.all(limit):
        if record.state not in FINAL_STATES:  # a finished run's state never changes: no round trip
            # a run whose start never answered is settled: running if it began, else never to begin
            key = (record.host, record.trainer_root, record.state == STARTING)
            by_host.setdefault(key, []).append(record.run_id)
    for (host, trainer_root, starting), run_ids in by_host.items():
        ask = settle_states if starting else fetch_states
        try:
            states = ask(remote_for(resolve_host(root, host)), trainer_root, run_ids)
        except GpurunError as exc:
            on_warning(f"{host}: {exc.message}")
            continue
        for run_id, state in states.items():
            history.update_state(run_id, state)
    return history.all(limit)


@dataclass
class OpenRun:
    """What every run command starts with: the project, its history, the run meant and its host."""

    root: Path
    history: History
    record: RunRecord
    remote: Remote


def open_run(root: Path, run: str | None, allow_not_started: bool = False) -> OpenRun:
    """The run a command means (an id, a unique prefix of one, or None: the latest) and its host. A run whose
    start never answered is settled first; one that never started is refused unless `allow_not_started`."""
    history = History(root)
    record = history.get(run)
    remote = remote_for(resolve_host(root, record.host))
    if record.state == STARTING:  # its start never answered: ask the host whether it began
        refresh_state(history, remote, record)
        record = history.get(record.run_id)
    if record.state == "not_started" and not allow_not_started:
        raise GpurunError(
            f"{record.run_id} never started on {record.host} (the connection dropped while starting it)",
            f"start it again: gpurun train {shlex.quote(record.task_dir)}",
        )
    return OpenRun(root, history, record, remote)


def exit_code_of(state: dict) -> int:
    """The exit code of a command that followed a run to its end: the job's own, or the one for how it ended."""
    name = state.get("state")
    if name == "not_found":
        raise GpurunError(f"run {state.get('run_id')} is not on its host", "list runs with: gpurun runs")
    if name == "succeeded":
        return 0
    if name == "stopped":
        return EXIT_STOPPED
    if name == "lost":
        return EXIT_LOST
    code = state.get("exit_code")
    return int(code) if code else EXIT_USER
