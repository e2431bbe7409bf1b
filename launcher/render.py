"""Rich presentation only: the live dashboard of `logs -f`, run tables, the push progress line."""

import math
import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from launcher.health import Health

STATE_STYLE = {
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "stopped": "yellow",
    "lost": "magenta",
    "not_found": "red",
}


def fmt_num(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return str(number)
    if number != 0 and (abs(number) < 1e-3 or abs(number) >= 1e5):
        return f"{number:.2e}"
    return f"{number:.{digits}g}"


class Dashboard:
    """Progress bar (step/total, ETA) and the latest loss / eval loss / lr, with log lines above it.

    On a terminal it is a rich Live view; piped (CI, `| tee`) it prints plain lines instead.
    """

    def __init__(self, console: Console, run_id: str, quiet_log: bool = False):
        self.console = console
        self.run_id = run_id
        self.quiet_log = quiet_log
        self.latest: dict = {}
        self.status = ""
        self.health = Health()
        self.alarms: list[str] = []
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.bar = self.progress.add_task(run_id, total=None)
        self.live = Live(self._view(), console=console, refresh_per_second=4, transient=False)
        self.interactive = console.is_terminal

    def __enter__(self):
        if self.interactive:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.interactive:
            self.live.update(self._view())
            self.live.__exit__(*exc)

    def log(self, text: str) -> None:
        if self.quiet_log:
            return
        for line in text.rstrip("\n").split("\n"):
            self.console.print(Text(line), highlight=False, soft_wrap=True)

    def events(self, events: list[dict]) -> None:
        for event in events:
            for alarm in self.health.feed(event):
                self.alarms.append(alarm)
                self.console.print(Text(f"ALARM: {alarm}", style="bold red"), soft_wrap=True)
            self.latest.update({k: v for k, v in event.items() if v is not None})
            step, total = event.get("step"), event.get("total_steps")
            if total:
                self.progress.update(self.bar, total=total)
            if step is not None:
                self.progress.update(self.bar, completed=step)
        if self.interactive:
            self.live.update(self._view())

    def set_status(self, text: str) -> None:
        self.status = text
        if self.interactive:
            self.live.update(self._view())
        else:
            self.console.print(f"[yellow]{text}[/]")

    def _view(self):
        stats = Table.grid(padding=(0, 3))
        latest = self.latest
        stats.add_row(
            f"loss [bold]{fmt_num(latest.get('loss'))}[/]",
            f"eval loss [bold]{fmt_num(latest.get('eval_loss'))}[/]",
            f"lr [bold]{fmt_num(latest.get('learning_rate'))}[/]",
            f"epoch {fmt_num(latest.get('epoch'), 3)}",
        )
        parts = [self.progress, stats]
        for alarm in self.alarms[-3:]:
            parts.append(Text(f"⚠ {alarm}", style="red"))
        if self.status:
            parts.append(Text(self.status, style="yellow"))
        return Group(*parts)


def runs_table(rows: list[dict]) -> Table:
    table = Table(title=None, show_lines=False)
    for column in ("run", "task", "host", "state", "step", "loss", "eval loss", "accuracy", "started"):
        table.add_column(column, no_wrap=column in ("run", "started"))
    for row in rows:
        state = row.get("state") or "?"
        shown_state = f"{state} ({row['exit_code']})" if state == "failed" and row.get("exit_code") else state
        step = f"{row.get('step') or 0}/{row.get('total_steps') or '?'}"
        table.add_row(
            row["run_id"],
            row.get("task") or "",
            row.get("host") or "",
            f"[{STATE_STYLE.get(state, 'white')}]{shown_state}[/]",
            step,
            fmt_num(row.get("loss")),
            fmt_num(row.get("eval_loss")),
            fmt_num(row.get("accuracy"), 3),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(row["started_at"])) if row.get("started_at") else "",
        )
    return table


def human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def push_plan_text(task_dir, plan) -> Text:
    text = Text(f"{task_dir}: {plan.files} files, {human_size(plan.size)}")
    if plan.largest:
        text.append("; largest: " + ", ".join(f"{name} ({human_size(size)})" for name, size in plan.largest))
    for name, size in plan.excluded_large:
        text.append(f"\n  not sent (ignore rules): {name} ({human_size(size)})", style="yellow")
    return text


def token_report_text(report: dict) -> Text:
    text = Text()
    for notice in report.get("notices", []):
        text.append(f"notice: {notice}\n", style="yellow")
    lengths = report.get("lengths")
    if lengths:
        shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
        text.append(f"tokens per example: {shown} (max_length {report['max_length']}); ")
        style = "yellow" if report["truncated"] else ""
        text.append(f"{report['truncated']} of {report['rows']} would be truncated", style=style)
    if report.get("eot_token") is not None:
        trained = "trained" if report.get("eot_trained") else "NOT trained"
        text.append(f"\nend-of-turn token {report['eot_token']}: {trained}")
    for i, pieces in enumerate(report.get("previews") or [], 1):
        text.append(f"\n--- example {i} (trained tokens highlighted) ---\n", style="dim")
        for piece, trained in pieces:
            text.append(piece, style="bold black on green" if trained else "dim")
    text.rstrip()
    return text


def setup_report_text(host: str, report: dict) -> Text:
    """What `gpurun setup` found or made: the Python runs will use, the stack's versions, CUDA."""
    verb = "already has" if report.get("already") else "now has"
    text = Text(f"{host} {verb} the training stack: runs use {report['python']} (Python {report['python_version']})")
    packages = report.get("packages") or {}
    text.append("\n  " + ", ".join(f"{name} {version or '–'}" for name, version in packages.items()))
    gpus = report.get("gpus") or []
    if report.get("cuda"):
        text.append(f"\n  CUDA: {len(gpus)} GPU(s): " + ", ".join(gpus), style="green")
    else:
        text.append("\n  CUDA: not available: runs there train on the CPU", style="yellow")
    return text
