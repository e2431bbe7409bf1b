"""`gpurun pull`: a run's results into tasks/<task>/runs/<run-id>/, once or, with --watch, while it runs."""

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import GpurunError
from launcher.runs import OpenRun, refresh_state
from launcher.sync import pull_run

RUNNING = ("running", "queued")

# progress(label) is a context manager yielding an on_progress(percent, bytes) callback (the CLI's bar).
Progress = Callable[[str], AbstractContextManager]


@dataclass
class Pull:
    """One `gpurun pull`: the run, where it lands, and how."""

    opened: OpenRun
    checkpoints: bool
    force: bool
    extras: tuple[str, ...]  # output/ folders of `merge` and `export` to bring too: "merged", "gguf"
    progress: Progress

    @property
    def dest(self) -> Path:
        return Path(self.opened.record.task_dir) / "runs" / self.opened.record.run_id

    def state_now(self) -> dict:
        record = self.opened.record
        state = refresh_state(self.opened.history, self.opened.remote, record)
        if state.get("state") == "not_found":
            raise GpurunError(f"run {record.run_id} is not on {record.host}", "list runs with: gpurun runs")
        return state

    def fetch(self, with_checkpoints: bool) -> None:
        record = self.opened.record
        with self.progress(f"pull {record.run_id}") as on_progress:
            pull_run(
                self.opened.remote,
                record.run_id,
                self.dest,
                with_checkpoints,
                on_progress,
                force=self.force,
                extras=self.extras,
            )
        draw_loss(record, self.dest)


def pull(job: Pull, partial: bool) -> dict:
    """Fetch what the run has; refused while it runs unless `partial`. Returns its state."""
    state = job.state_now()
    if state.get("state") in RUNNING and not partial:
        record = job.opened.record
        raise GpurunError(
            f"{record.run_id} is still running (step {state.get('step', 0)}/{state.get('total_steps', '?')})",
            "wait for it (gpurun logs -f), pull what exists now with --partial, or keep pulling with --watch",
        )
    job.fetch(job.checkpoints)
    return state


def watch(job: Pull, interval: float, say: Callable[[str], None]) -> dict | None:
    """Fetch with checkpoints every `interval` seconds while the run goes on, then once more: its end state.
    None when Ctrl-C stopped the watching (the run goes on)."""
    state = job.state_now()
    seen: set[str] = set()
    try:
        while state.get("state") in RUNNING:
            try:
                job.fetch(True)
            except GpurunError as exc:  # a checkpoint rotated away mid-transfer: the next round gets it
                say(f"[yellow]warning:[/] {exc.message}; retrying in {interval:g}s")
            new = sorted({p.name for p in job.dest.glob("checkpoint-*")} - seen)
            for name in new:
                say(f"fetched {name}")
            seen.update(new)
            say(f"step {state.get('step', 0)}/{state.get('total_steps', '?')}; next fetch in {interval:g}s")
            time.sleep(interval)
            state = job.state_now()
    except KeyboardInterrupt:
        say("\nstopped watching; the run goes on")
        return None
    job.checkpoints = True
    job.fetch(True)
    return state


def draw_loss(record, dest: Path) -> None:
    """loss.png beside the pulled run's events, when matplotlib is installed here (the [plot] extra); a pull
    never fails for a picture."""
    import importlib.util

    events = dest / "events.jsonl"
    if importlib.util.find_spec("matplotlib") is None or not events.is_file():
        return
    from launcher.plot import curve_from_events, write_plot

    row = {"run_id": record.run_id, "experiment": record.experiment, "overrides": record.override_list()}
    try:
        write_plot([{**row, "curve": curve_from_events(events)}], dest / "loss.png")
    except Exception:  # noqa: BLE001 - a broken font cache or backend: the pull itself succeeded
        pass
