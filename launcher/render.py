"""Rich presentation only: the live dashboard of `logs -f`, run tables, the push progress line."""

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from launcher.health import Health
from trainer.sizes import human_bytes

STATE_STYLE = {
    "running": "cyan",
    "queued": "yellow",
    "succeeded": "green",
    "failed": "red",
    "stopped": "yellow",
    "lost": "magenta",
    "not_found": "red",
    "starting": "cyan",
    "not_started": "dim",
}


def accuracy_text(accuracy, baseline, arguments=None, baseline_arguments=None) -> str:
    """The eval suite's figures beside the base model's, as the run measured both.

    A tool-call suite has two: the function's name, and name plus arguments (`name 0.825 · args 0.600`).
    """

    def figures(name, args) -> str:
        if args is None:
            return f"{float(name):.3f}"
        return f"name {float(name):.3f} · args {float(args):.3f}"

    if accuracy is None:
        return "–"
    base = f" (base {figures(baseline, baseline_arguments)})" if baseline is not None else ""
    return figures(accuracy, arguments) + base


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
            _EtaColumn(self),
            console=console,
        )
        self.bar = self.progress.add_task(run_id, total=None)
        self.eta = StepRate()
        # After the last step (saving, samples, eval suite): what runs now, instead of a bar frozen at 100%.
        self.phase: dict | None = None
        self.spinner = Spinner("dots", style="cyan")
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
            if event.get("kind") == "phase":
                self.phase = event
            elif event.get("kind") in ("done", "error", "stopped", "train_begin"):
                self.phase = None
            step, total = event.get("step"), event.get("total_steps")
            if total:
                self.progress.update(self.bar, total=total)
            if step is not None:
                self.progress.update(self.bar, completed=step)
            self.eta.feed(event)
        if self.interactive:
            self.live.update(self._view())

    def seed(self, step: int | None, total: int | None) -> None:
        """What the laptop knows before the first event: a resumed run starts at its checkpoint's step."""
        if total:
            self.progress.update(self.bar, total=total)
        if step:
            self.progress.update(self.bar, completed=step)

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
        parts = [self._phase_view() if self.phase else self.progress, stats]
        for alarm in self.alarms[-3:]:
            parts.append(Text(f"⚠ {alarm}", style="red"))
        if self.status:
            parts.append(Text(self.status, style="yellow"))
        return Group(*parts)

    def _phase_view(self):
        """A spinner, what the trainer is doing now, and how far it is (2/4)."""
        phase = self.phase
        done, total = phase.get("done") or 0, phase.get("total") or 0
        label = PHASE_LABELS.get(phase.get("phase"), str(phase.get("phase")))
        trained = self.progress.tasks[0]
        text = Text.assemble((f"{self.run_id} ", "bold"), f"{label} ", (f"{done}/{total}", "bold"))
        text.append(f"   (training done: step {trained.completed:g}/{trained.total or '?'})", style="dim")
        self.spinner.update(text=text)
        row = Table.grid(padding=(0, 1))
        row.add_row(self.spinner, ProgressBar(total=max(total, 1), completed=done, width=30))
        return row


PHASE_LABELS = {
    "saving": "saving the adapter",
    "samples": "sample generations",
    "eval_suite": "eval suite, trained model",
    "baseline": "eval suite, base model (adapter off)",
}


class StepRate:
    """ETA from the steps this run has done itself, timed by the host's event clock.

    A resumed run starts at its checkpoint's step, and `logs -f` attached late receives a whole
    backlog at once: a rate taken from the laptop's clock and step 0 would be nonsense in both cases.
    The rate is measured from the trainer's own `train_begin` (or the first step seen) to the latest
    step; the countdown goes on between events on the laptop's clock.
    """

    def __init__(self):
        self.anchor: tuple[float, int] | None = None  # (host time, step) this run's stepping started at
        self.latest: tuple[float, int, int] | None = None  # (host time, step, total)
        self.received = 0.0  # laptop time the latest step arrived

    def feed(self, event: dict) -> None:
        t, step, total = event.get("t"), event.get("step"), event.get("total_steps")
        if not isinstance(t, (int, float)) or step is None:
            return
        if event.get("kind") == "train_begin":
            self.anchor, self.latest = (t, step), None  # a new stepping (a restart, a resume) starts here
            return
        if event.get("kind") != "log" or not total:
            return
        if self.anchor is None:
            self.anchor = (t, step)
        self.latest = (t, step, total)
        self.received = time.time()

    def seconds_left(self, now: float | None = None) -> float | None:
        if self.anchor is None or self.latest is None:
            return None
        (t0, step0), (t1, step1, total) = self.anchor, self.latest
        if step1 <= step0 or t1 <= t0:
            return None
        left = (total - step1) * (t1 - t0) / (step1 - step0)
        return max(0.0, left - ((now or time.time()) - self.received))


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "ETA –:–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"ETA {hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"ETA {rest // 60}:{rest % 60:02d}"


class _EtaColumn(ProgressColumn):
    def __init__(self, dashboard: "Dashboard"):
        super().__init__()
        self.dashboard = dashboard

    def render(self, task) -> Text:
        return Text(fmt_duration(self.dashboard.eta.seconds_left()), style="progress.remaining")


def resume_text(resumed) -> Text:
    """What a resumed run continues with: its parent's checkpoint and config, and what --set changed."""
    inherited = config_summary(resumed.experiment, resumed.overrides) or "task.yaml as it was"
    total = resumed.total_steps or "?"
    text = Text(f"from {resumed.checkpoint} (step {resumed.checkpoint_step}/{total}) with its config: {inherited}")
    for key, old, new in resumed.changes:
        text.append(f"\n  --set {key}: {old!r} → {new!r}", style="yellow")
    return text


def config_summary(experiment: str | None, overrides: list[str]) -> str:
    """`--exp NAME --set k=v ...` as the user would type it: how a run differs from task.yaml."""
    parts = [f"--exp {experiment}"] if experiment else []
    parts += [f"--set {item}" for item in overrides]
    return " ".join(parts)


def row_accuracy(row: dict) -> str:
    """A run's eval-suite scores beside its base model's, from a history row or a host's summary."""
    keys = ("accuracy", "baseline_accuracy", "arguments_accuracy", "baseline_arguments_accuracy")
    return accuracy_text(*(row.get(key) for key in keys))


def json_row(row: dict) -> dict:
    """A run as `--json` gives it: the history's fields, overrides as a list."""
    return {**row, "overrides": overrides_of(row)}


def overrides_of(row: dict) -> list[str]:
    import json

    return json.loads(row.get("overrides") or "[]")


def split_note(split: str | None, config: str) -> str:
    """The config column, with the batch split a run trains with after running out of memory."""
    if not split:
        return config
    batch, _, accumulation = split.partition("x")
    note = f"out of memory: batch {batch} x accumulation {accumulation}"
    return f"{config} ({note})" if config else f"({note})"


def runs_table(rows: list[dict]) -> Table:
    from pathlib import Path

    table = Table(title=None, show_lines=False)
    for column in ("run", "task", "host", "state", "step", "loss", "eval loss", "accuracy", "config", "started"):
        table.add_column(column, no_wrap=column in ("run", "started"))
    for row in rows:
        state = row.get("state") or "?"
        shown_state = f"{state} ({row['exit_code']})" if state == "failed" and row.get("exit_code") else state
        step = f"{row.get('step') or 0}/{row.get('total_steps') or '?'}"
        table.add_row(
            row["run_id"],
            Path(row["task_dir"]).name if row.get("task_dir") else row.get("task") or "",  # the folder's own name
            row.get("host") or "",
            f"[{STATE_STYLE.get(state, 'white')}]{shown_state}[/]",
            step,
            fmt_num(row.get("loss")),
            fmt_num(row.get("eval_loss")),
            row_accuracy(row),
            Text(split_note(row.get("split"), config_summary(row.get("experiment"), overrides_of(row)))),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(row["started_at"])) if row.get("started_at") else "",
        )
    return table


def push_plan_text(task_dir, plan) -> Text:
    text = Text(f"{task_dir}: {plan.files} files, {human_bytes(plan.size)}")
    if plan.largest:
        text.append("; largest: " + ", ".join(f"{name} ({human_bytes(size)})" for name, size in plan.largest))
    for name, size in plan.excluded_large:
        text.append(f"\n  not sent (ignore rules): {name} ({human_bytes(size)})", style="yellow")
    return text


def plain(value) -> str:
    """A value from the user's files, safe to put in a rich markup string: `[/x]` prints as written, and a
    string that is not valid Unicode (a lone surrogate) prints as its escape instead of failing the output."""
    from rich.markup import escape

    return escape(str(value).encode("utf-8", "backslashreplace").decode("utf-8"))


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
        if report.get("lost_trained"):
            text.append(f", {report['lost_trained']} of them losing trained tokens", style="yellow")
        suggested = report.get("suggested_max_length")
        if report["truncated"] and suggested and suggested > report["max_length"]:
            text.append(f"; max_length {suggested} would keep 99% of them whole", style="yellow")
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


def end_text(state: dict) -> str:
    """How a followed run ended, in one line (its exit code is launcher.runs.exit_code_of's)."""
    name = state.get("state")
    if name == "succeeded":
        return f"[green]succeeded[/]: fetch the adapter with: gpurun pull {state.get('run_id')}"
    if name == "stopped":
        return "[yellow]stopped[/] (gpurun stop)"
    if name == "lost":
        return (
            "[magenta]lost[/]: the job is gone and nothing says how it ended"
            " (host rebooted, or wrapper and trainer killed)"
        )
    return f"[red]failed[/] with exit code {state.get('exit_code')}: see the log above"


def make_console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # piped: tables keep their columns rather than fold to 80
    return console


@contextmanager
def progress_bar(console: Console, label: str):
    """A context manager yielding an on_progress(percent, bytes) callback that drives a rich bar."""
    progress = Progress(
        TextColumn(label), BarColumn(), TaskProgressColumn(), DownloadColumn(), console=console, transient=True
    )
    with progress:
        task = progress.add_task(label, total=100)

        def on_progress(percent: int, done_bytes: int) -> None:
            total = done_bytes * 100 / percent if percent else None
            progress.update(task, completed=done_bytes, total=total)

        yield on_progress


def shown_path(root: Path, path: Path) -> str:
    """A path as the user reads it: relative to the project when inside it."""
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def compare_table(rows: list[dict], differing: list[str], width: int = 160) -> Table | object:
    """gpurun compare: a row per run; the config keys that differ, then the figures. A figure no run has (peak GPU
    memory on the CPU, the suite of a task without one) is left out; when a row per run would not fit `width`
    columns, a column per run instead (fields down the side), numbered below a list of the ids when even those
    would be cut, so that no figure and no id is."""
    from launcher.compare import flat

    def config_text(value) -> str:
        if value is None:
            return "–"
        return ", ".join(map(str, value)) if isinstance(value, list) else plain(value)

    def suite(row: dict, prefix: str = "") -> str:
        name, args = row.get(f"{prefix}accuracy"), row.get(f"{prefix}arguments_accuracy")
        if name is None:
            return "–"
        return f"{float(name):.3f}" + (f" · {float(args):.3f}" if args is not None else "")

    def runtime(row: dict) -> str:
        value = row.get("train_runtime")
        return f"{value:.0f} s" if isinstance(value, (int, float)) else "–"

    configs = [flat(row.get("config") or {}) for row in rows]
    tool_calls = any(row.get("arguments_accuracy") is not None for row in rows)
    columns = [("experiment", [row.get("experiment") or "–" for row in rows], "left")]
    columns += [(key.rsplit(".", 1)[-1], [config_text(c.get(key)) for c in configs], "left") for key in differing]
    columns += [
        ("state", [row.get("state") or "?" for row in rows], "left"),
        ("steps", [str(row.get("step") or "–") for row in rows], "right"),
        ("loss", [fmt_num(row.get("train_loss")) for row in rows], "right"),
        ("eval loss", [fmt_num(row.get("eval_loss")) for row in rows], "right"),
        ("best eval", [fmt_num(row.get("best_eval_loss")) for row in rows], "right"),
        ("suite name · args" if tool_calls else "suite", [suite(row) for row in rows], "right"),
        ("base model", [suite(row, "baseline_") for row in rows], "right"),
        ("time", [runtime(row) for row in rows], "right"),
        ("peak GB", [fmt_num(row.get("peak_mem_gb")) for row in rows], "right"),
        ("est. GB", [fmt_num(row.get("memory_estimate_gb")) for row in rows], "right"),
    ]
    shown = [(head, values, justify) for head, values, justify in columns if any(v != "–" for v in values)]
    from rich import box

    ids = [row["run_id"] for row in rows]
    natural = max(map(len, ids)) + sum(max(len(head), *map(len, values)) + 3 for head, values, _ in shown)
    table = Table(title=None, show_lines=False, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    if natural > width:
        field = max(len(head) for head, _, _ in shown)
        cells = max(len(v) for _, values, _ in shown for v in values)
        numbered = field + len(ids) * (max(map(len, ids)) + 3) > width  # the ids themselves would be cut
        table.add_column("", no_wrap=True)
        for i, run_id in enumerate(ids, 1):
            table.add_column(str(i) if numbered else run_id, justify="right", min_width=min(cells, 12))
        for head, values, _ in shown:
            table.add_row(head, *values)
        if not numbered:
            return table
        from rich.console import Group

        return Group(*(Text(f"{i}  {run_id}") for i, run_id in enumerate(ids, 1)), Text(""), table)
    table.add_column("run", no_wrap=True)
    for head, _, justify in shown:
        table.add_column(head, justify=justify)
    for i, run_id in enumerate(ids):
        table.add_row(run_id, *(values[i] for _, values, _ in shown))
    return table


def infer_table(answers: list[dict]) -> Table | Text:
    """One answer: the reply and its call as lines; several: a table."""
    import json

    def call_text(answer: dict) -> str:
        calls, unknown = answer.get("calls") or [], answer.get("unknown") or []

        def one(call: dict) -> str:
            text = f"{call.get('name')}({json.dumps(call.get('arguments'), ensure_ascii=False)})"
            return text + (" - not one of the task's tools" if call.get("name") in unknown else "")

        return "; ".join(one(c) for c in calls)

    if len(answers) == 1:
        answer = answers[0]
        text = Text(answer["reply"].strip() + "\n")
        text.append(f"call: {call_text(answer) or 'none'}", style="bold" if answer.get("calls") else "yellow")
        return text
    table = Table(show_lines=True)
    for column in ("prompt", "reply", "call"):
        table.add_column(column)
    for answer in answers:
        table.add_row(plain(answer["prompt"]), plain(answer["reply"].strip()), plain(call_text(answer) or "-"))
    return table
