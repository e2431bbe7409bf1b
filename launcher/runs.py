"""Run records: ids, the laptop's history (a cache; the host is the truth), and state from the host.

History is sqlite from the standard library, in WAL mode with a busy timeout, so two terminals
(a `logs -f` and a `train`) can use it at once.
"""

import fcntl
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import GpurunError
from launcher.project import state_dir
from launcher.remote import Remote

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
            "baseline_accuracy=?, arguments_accuracy=?, baseline_arguments_accuracy=?, updated_at=? WHERE run_id=?",
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


def fetch_states(remote: Remote, trainer_root: str, run_ids: list[str]) -> dict[str, dict]:
    """One round trip: the state of several runs on one host."""
    if not run_ids:
        return {}
    argv = remote.python_argv(trainer_root, "state", *(remote.path("runs", r) for r in run_ids))
    proc = remote.run(argv)
    states = {}
    for line in proc.stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        states[item["run_id"]] = item
    return states


def refresh_state(history: History, remote: Remote, record: RunRecord) -> dict:
    """Ask the host (the truth) for one run's state and cache it in the history."""
    if record.state in (STARTING, "not_started"):
        state = settle_states(remote, record.trainer_root, [record.run_id]).get(record.run_id, {})
    else:
        state = fetch_states(remote, record.trainer_root, [record.run_id]).get(record.run_id, {})
    history.update_state(record.run_id, state)
    return state


def settle_states(remote: Remote, trainer_root: str, run_ids: list[str]) -> dict[str, dict]:
    """The state of runs whose start never answered: running (or ended) if it began, else `not_started`,
    and then the host makes sure it never begins (see trainer/hostquery.py)."""
    if not run_ids:
        return {}
    argv = remote.python_argv(trainer_root, "settle", *(remote.path("runs", r) for r in run_ids))
    return {item["run_id"]: item for item in _json_lines(remote.run(argv).stdout)}


def fetch_resume_info(remote: Remote, trainer_root: str, run_id: str) -> dict:
    """The parent of a resume, as its host has it: run.json, state, latest complete checkpoint."""
    argv = remote.python_argv(trainer_root, "resume-info", remote.path("runs", run_id))
    replies = _json_lines(remote.run(argv).stdout)
    return replies[-1] if replies else {"state": "not_found", "run_id": run_id}


def _json_lines(text: str) -> list[dict]:
    items = []
    for line in (text or "").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and "run_id" in item:
            items.append(item)
    return items
