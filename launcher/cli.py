"""gpurun: fine-tune LoRA adapters on GPU machines you reach by SSH.

Commands are thin: parse, call one function, render. Every import that costs (rich's live view,
the sync and launch code) happens inside the command that needs it, so `gpurun --help` is instant
and never loads torch or an SSH library.
"""

import os
import sys
from pathlib import Path

import click

from launcher.errors import EXIT_LOST, EXIT_STOPPED, EXIT_USER, GpurunError


class GpurunGroup(click.Group):
    """Turns GpurunError into `Error: …` / `Hint: …` on stderr and its exit code; never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GpurunError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            for line in exc.details:
                click.echo(f"  {line}", err=True)
            if exc.hint:
                click.echo(f"Hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug: say so in one line, keep the traceback one variable away
            if os.environ.get("GPURUN_DEBUG"):
                raise
            click.echo(f"Error: internal error: {type(exc).__name__}: {exc}", err=True)
            click.echo("Hint: this is a gpurun bug; rerun with GPURUN_DEBUG=1 for the traceback", err=True)
            ctx.exit(EXIT_USER)


@click.group(cls=GpurunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gpurun", prog_name="gpurun")
def main():
    """Fine-tune LoRA adapters on GPU machines you reach by SSH.

    \b
    Example:
      gpurun push tasks/hr          # rsync the task to the default host
      gpurun train --host a100      # start the trainer there, detached
      gpurun logs -f                # live dashboard of the latest run
      gpurun pull                   # adapter into tasks/hr/runs/<run-id>/
    """


def _root() -> Path:
    from launcher.project import find_root

    return find_root()


def _run_and_remote(run: str | None, allow_not_started: bool = False):
    """(project root, history, the named or latest run, its host's Remote): what every run command starts with."""
    import shlex

    from launcher.hosts import resolve_host
    from launcher.remote import remote_for
    from launcher.runs import STARTING, History

    root = _root()
    history = History(root)
    record = history.get(run)
    remote = remote_for(resolve_host(root, record.host))
    if record.state == STARTING:  # its start never answered: ask the host whether it began
        from launcher.runs import refresh_state

        refresh_state(history, remote, record)
        record = history.get(record.run_id)
    if record.state == "not_started" and not allow_not_started:
        raise GpurunError(
            f"{record.run_id} never started on {record.host} (the connection dropped while starting it)",
            f"start it again: gpurun train {shlex.quote(record.task_dir)}",
        )
    return root, history, record, remote


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # piped: tables keep their columns rather than fold to 80
    return console


@main.command()
@click.argument("task", required=False)
@click.option(
    "--host", help="Host from hosts.yaml or an ~/.ssh/config alias (default: $GPURUN_HOST, else hosts.yaml's default)."
)
def push(task, host):
    """Rsync a task directory to a host: <workdir>/tasks/<task>/ there becomes an exact mirror of it.

    A file deleted here is deleted from the mirror too; run outputs live outside it and are never
    touched. .gitignore and .gpurunignore are honoured.

    \b
    Example:
      gpurun push tasks/hr --host a100
    """
    from launcher.checks import check_task, data_paths
    from launcher.hosts import resolve_host
    from launcher.launch import push as do_push
    from launcher.launch import resolve_task_dir
    from launcher.render import push_plan_text
    from launcher.runs import History
    from launcher.sync import plan_push, task_name_of

    root = _root()
    task_dir = resolve_task_dir(root, task, History(root))
    target = resolve_host(root, host)
    task_name_of(task_dir)
    data_files = data_paths(check_task(task_dir).config)  # nothing is pushed for an invalid task
    console = _console()
    console.print(push_plan_text(task_dir, plan_push(task_dir, data_files)))
    with _progress(console, f"push {task_dir.name} → {target.name}") as on_progress:
        dest = do_push(root, task_dir, target, on_progress, data_files)
    console.print(f"pushed [bold]{task_dir}[/] to {target.name}:{dest}")


@main.command()
@click.argument("task", required=False)
@click.option("--host", help="Host to train on (default: $GPURUN_HOST, else hosts.yaml's default).")
@click.option("--gpus", help="GPUs: auto, a count (2) or indices (0,1). Default: the host entry's `gpus`.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a task value for this run.")
@click.option("--exp", "experiment", help="Overlay tasks/<task>/experiments/<NAME>.yaml.")
@click.option(
    "--resume", "resume", metavar="RUN", help="Continue RUN from its latest complete checkpoint, with its config."
)
@click.option(
    "--force", is_flag=True, help="Use GPUs someone holds; with --resume, allow a --set that changes the schedule."
)
def train(task, host, gpus, overrides, experiment, resume, force):
    """Check the task, sync it, and start the trainer on the host, detached. Returns at once.

    TASK defaults to the task pushed last. With --resume RUN: RUN's task, host and resolved config
    (its --exp and --set values); a --set given here applies on top, unless it changes the schedule
    (batch, accumulation, epochs, scheduler, warmup, fewer steps): that needs --force.

    \b
    Example:
      gpurun train tasks/hr --host a100 --gpus 0,1 --set training.max_steps=300
      gpurun train --resume hr-20260101-120000-ab12
      GPURUN_HOST=a100 gpurun train tasks/hr
    """
    from launcher.launch import launch, resolve_task_dir
    from launcher.runs import History

    root = _root()
    history = History(root)
    parent = history.get(resume) if resume else None
    if parent and task is None:
        task = parent.task_dir
    if parent and host is None:
        host = parent.host
    task_dir = resolve_task_dir(root, task, history)
    console = _console()
    with console.status(f"checking and syncing {task_dir.name}…"):
        launched = launch(
            root, task_dir, host, gpus=gpus, overrides=overrides, experiment=experiment, resume=parent, force=force
        )
    for notice in launched.checked.notices:
        console.print(f"[yellow]notice:[/] {notice}")
    for warning in launched.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    record = launched.record
    gpus_shown = launched.gpus if launched.gpus else "default"
    if launched.job_id:
        gpus_shown = f"Slurm's; job {launched.job_id}"
    resumed = f", resuming {parent.run_id}" if parent else ""
    console.print(f"started [bold]{record.run_id}[/] on {record.host} (GPUs: {gpus_shown}{resumed})")
    if launched.queued:
        console.print(launched.queued)
    if launched.resumed:
        from launcher.render import resume_text

        console.print(resume_text(launched.resumed))
    console.print(f"follow it: gpurun logs -f {record.run_id}")


@main.command()
@click.argument("run", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep following until the job ends; exit with its exit code.")
@click.option("--tail", type=int, default=None, help="Start with only the last N lines of train.log.")
def logs(run, follow, tail):
    """Show a run's train.log; with -f, a live dashboard until the job ends.

    RUN defaults to the latest run. With -f the exit code is the job's own; 130 if it was
    stopped, 125 if it was lost. Ctrl-C detaches: the job goes on.

    \b
    Example:
      gpurun logs -f
    """
    from launcher.follow import follow as do_follow
    from launcher.render import Dashboard

    root, history, record, remote = _run_and_remote(run)
    console = _console()
    dashboard = Dashboard(console, record.run_id, quiet_log=False)
    dashboard.seed(record.step, record.total_steps)  # a resumed run shows its step N/TOTAL from the start
    lines: list[str] = []
    if not follow:
        from launcher.follow import read_once

        state = read_once(remote, record, lines.append)
        text = "".join(lines)
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:]) + "\n"
        sys.stdout.write(text)
        history.update_state(record.run_id, state)
        return
    try:
        with dashboard:
            start = -tail if tail is not None else 0
            state = do_follow(remote, record, dashboard.log, dashboard.events, dashboard.set_status, log_offset=start)
    except KeyboardInterrupt:
        console.print(f"\ndetached; {record.run_id} goes on on {record.host}. Reattach: gpurun logs -f {record.run_id}")
        sys.exit(0)
    from launcher.nodes import end_state, nodes_of

    nodes = nodes_of(root, history, record)
    if nodes:  # several hosts: node 0 was followed; a failure on another node ended the run, and is named
        state = end_state(nodes, record.run_id, state, console.print)
    history.update_state(record.run_id, state)
    sys.exit(_report_end(console, state))


def _report_end(console, state: dict) -> int:
    name = state.get("state")
    if name == "not_found":
        raise GpurunError(f"run {state.get('run_id')} is not on its host", "list runs with: gpurun runs")
    code = state.get("exit_code")
    if name == "succeeded":
        console.print(f"[green]succeeded[/]: fetch the adapter with: gpurun pull {state.get('run_id')}")
        return 0
    if name == "stopped":
        console.print("[yellow]stopped[/] (gpurun stop)")
        return EXIT_STOPPED
    if name == "lost":
        console.print(
            "[magenta]lost[/]: the job is gone and nothing says how it ended"
            " (host rebooted, or wrapper and trainer killed)"
        )
        return EXIT_LOST
    console.print(f"[red]failed[/] with exit code {code}: see the log above")
    return int(code) if code else EXIT_USER


@main.command()
@click.argument("run", required=False)
@click.option("--checkpoints", is_flag=True, help="Also bring the checkpoint-* folders.")
@click.option("--partial", is_flag=True, help="Pull what exists now, even while the run goes on.")
@click.option("--watch", is_flag=True, help="Keep fetching new checkpoints while the run goes on.")
@click.option("--interval", default=30.0, show_default=True, help="Seconds between fetches with --watch.")
@click.option("--force", is_flag=True, help="Overwrite local files you changed since the last pull.")
@click.option("--merged", is_flag=True, help="Also bring output/merged/ (written by gpurun merge).")
def pull(run, checkpoints, partial, watch, interval, force, merged):
    """Bring a run's adapter, tokenizer, state and logs into tasks/<task>/runs/<run-id>/.

    RUN defaults to the latest run. Never deletes a local file; never overwrites one you changed
    since the last pull (unless --force). Interrupted transfers resume.

    \b
    Example:
      gpurun pull --checkpoints
      gpurun pull --watch --interval 60
    """
    import time

    from launcher.runs import refresh_state
    from launcher.sync import pull_run

    root, history, record, remote = _run_and_remote(run)
    dest = Path(record.task_dir) / "runs" / record.run_id
    console = _console()

    def state_now() -> dict:
        state = refresh_state(history, remote, record)
        if state.get("state") == "not_found":
            raise GpurunError(f"run {record.run_id} is not on {record.host}", "list runs with: gpurun runs")
        return state

    def fetch(with_checkpoints: bool) -> None:
        with _progress(console, f"pull {record.run_id}") as on_progress:
            pull_run(remote, record.run_id, dest, with_checkpoints, on_progress, force=force, merged=merged)

    state = state_now()
    if watch:
        seen: set[str] = set()
        try:
            while state.get("state") in ("running", "queued"):
                try:
                    fetch(True)
                except GpurunError as exc:  # a checkpoint rotated away mid-transfer: the next round gets it
                    console.print(f"[yellow]warning:[/] {exc.message}; retrying in {interval:g}s")
                new = sorted({p.name for p in dest.glob("checkpoint-*")} - seen)
                for name in new:
                    console.print(f"fetched {name}")
                seen.update(new)
                console.print(
                    f"step {state.get('step', 0)}/{state.get('total_steps', '?')}; next fetch in {interval:g}s"
                )
                time.sleep(interval)
                state = state_now()
        except KeyboardInterrupt:
            console.print("\nstopped watching; the run goes on")
            return
        checkpoints = True
    elif state.get("state") in ("running", "queued") and not partial:
        raise GpurunError(
            f"{record.run_id} is still running (step {state.get('step', 0)}/{state.get('total_steps', '?')})",
            "wait for it (gpurun logs -f), pull what exists now with --partial, or keep pulling with --watch",
        )
    fetch(checkpoints)
    adapter = dest / "adapter_model.safetensors"
    if adapter.exists():
        console.print(f"adapter: [bold]{_shown(root, adapter)}[/]")
    elif not checkpoints and state.get("state") in ("stopped", "failed", "lost"):
        console.print(
            f"[yellow]no final adapter[/]: the run ended {state.get('state')} before saving one; "
            f"its checkpoints come with: gpurun pull {record.run_id} --checkpoints"
        )
    console.print(f"pulled {record.run_id} ({state.get('state')}) into {_shown(root, dest)}")


def _shown(root: Path, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


@main.command()
@click.argument("run", required=False)
def status(run):
    """Show a run's state (running / succeeded / failed / stopped / lost), as its host reports it.

    \b
    Example:
      gpurun status hr-20260101-120000-ab12
    """
    from launcher.render import runs_table
    from launcher.runs import refresh_state

    root, history, record, remote = _run_and_remote(run, allow_not_started=True)
    refresh_state(history, remote, record)
    row = {**history.get(record.run_id).__dict__}
    _console().print(runs_table([row]))
    from launcher.nodes import node_lines, node_states, nodes_of

    nodes = nodes_of(root, history, record)
    for line in node_lines(nodes, node_states(nodes, record.run_id)) if nodes else []:
        _console().print(line)


@main.command()
@click.option("--limit", default=20, show_default=True, help="How many runs to show, newest first.")
def runs(limit):
    """List this project's runs with their state from each host.

    \b
    Example:
      gpurun runs --limit 5
    """
    from launcher.hosts import resolve_host
    from launcher.remote import remote_for
    from launcher.render import runs_table
    from launcher.runs import FINAL_STATES, STARTING, History, fetch_states, settle_states

    root = _root()
    history = History(root)
    records = history.all(limit)
    by_host: dict[tuple[str, str, bool], list[str]] = {}
    for record in records:
        if record.state not in FINAL_STATES:  # a finished run's state never changes: no round trip
            # a run whose start never answered is settled: running if it began, else never to begin
            key = (record.host, record.trainer_root, record.state == STARTING)
            by_host.setdefault(key, []).append(record.run_id)
    for (host, trainer_root, starting), run_ids in by_host.items():
        ask = settle_states if starting else fetch_states
        try:
            states = ask(remote_for(resolve_host(root, host)), trainer_root, run_ids)
        except GpurunError as exc:
            _console(stderr=True).print(f"[yellow]warning:[/] {host}: {exc.message}")
            continue
        for run_id, state in states.items():
            history.update_state(run_id, state)
    rows = [r.__dict__ for r in history.all(limit)]
    if not rows:
        _console().print("no runs yet: gpurun train tasks/demo")
        return
    _console().print(runs_table(rows))


@main.command()
@click.argument("run", required=False)
@click.option("--grace", default=60.0, show_default=True, help="Seconds to let the trainer save before SIGKILL.")
def stop(run, grace):
    """Stop a run: SIGTERM (the trainer saves a checkpoint), SIGKILL after --grace seconds.

    \b
    Example:
      gpurun stop --grace 120
    """
    import json

    from launcher.runs import FINAL_STATES

    root, history, record, remote = _run_and_remote(run)
    console = _console()
    if record.state in FINAL_STATES:  # a final state never changes: no round trip, no false "waiting"
        console.print(f"{record.run_id}: already {record.state}, nothing to stop")
        return
    argv = remote.python_argv(record.trainer_root, "stop", remote.path("runs", record.run_id), str(grace))
    # The host's stop returns once the trainer has saved and exited: up to --grace seconds of silence.
    waiting = f"stopping {record.run_id}: waiting for the checkpoint at the next step (SIGKILL after {grace:g}s)…"
    if not console.is_terminal:
        console.print(waiting)  # piped: one line; on a terminal, the spinner below says it
    from launcher.nodes import nodes_of, stop_all

    nodes = nodes_of(root, history, record)
    with console.status(waiting):
        if nodes:  # several hosts: every node at once; node 0's state is the run's
            state = stop_all(nodes, record.run_id, grace)
        else:
            state = json.loads(remote.run(argv).stdout.strip().splitlines()[-1])
    history.update_state(record.run_id, state)
    ended = state.get("state")
    console.print(f"{record.run_id}: {ended}" + ("" if ended == "stopped" else " (it had already ended)"))


@main.command()
@click.argument("run", required=False)
def merge(run):
    """Fold a finished run's LoRA adapter into its base model, on the host: output/merged/.

    Bring it home with `gpurun pull RUN --merged`.

    \b
    Example:
      gpurun merge hr-20260101-120000-ab12
    """
    from launcher.sync import push_trainer

    root, _, record, remote = _run_and_remote(run)
    console = _console()
    with console.status(f"merging {record.run_id} on {record.host}…"):
        trainer_root = push_trainer(remote)  # this launcher's trainer: the run's own may predate merge
        argv = remote.python_argv(trainer_root, "merge", remote.path("runs", record.run_id))
        proc = remote.run(argv, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0:
        message = next((line[7:] for line in lines if line.startswith("error: ")), None)
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise GpurunError(f"merge of {record.run_id} failed: {message or tail}", "check the run: gpurun status")
    console.print(lines[-1] if lines else "merged")
    console.print(f"bring it home: gpurun pull {record.run_id} --merged")


@main.command()
@click.argument("task", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Check with this override.")
@click.option("--exp", "experiment", help="Check with tasks/<task>/experiments/<NAME>.yaml overlaid.")
@click.option("--show", default=0, metavar="N", help="Render N examples with the trained tokens highlighted.")
@click.option("--strict", is_flag=True, help="Exit 1 on any warning too (notices, truncated examples): for CI.")
def validate(task, overrides, experiment, show, strict):
    """Check a task's config and every data row, on this machine, without touching a host.

    TASK defaults to the task pushed (or trained) last.

    With the training stack installed here (and the tokenizer at hand: always for builtin:tiny),
    also token lengths against max_length and the loss mask of every example.

    \b
    Example:
      gpurun validate tasks/hr --set training.learning_rate=1e-4
      gpurun validate tasks/demo --show 2
      gpurun validate tasks/hr --strict
    """
    from launcher.checks import check_task, token_checks, warnings_of
    from launcher.launch import resolve_task_dir
    from launcher.render import plain, token_report_text
    from launcher.runs import History

    root = _root()
    task_dir = resolve_task_dir(root, task, History(root))
    checked = check_task(task_dir, overrides, experiment)
    console = _console()
    for notice in checked.notices:
        console.print(f"[yellow]notice:[/] {plain(notice)}")
    report = token_checks(root, task_dir, overrides, experiment, show=show)
    counts = ", ".join(f"{n} {split}" for split, n in checked.counts.items() if n)
    config = checked.config
    console.print(f"[green]ok[/] {plain(task_dir)}: {config.task} on {plain(config.base_model)}; rows: {counts}")
    if report is None:
        console.print("token checks: the training stack is not installed here; the host runs them")
    else:
        console.print(token_report_text(report))
    warnings = warnings_of(checked, report)
    if strict and warnings:
        raise GpurunError(
            f"--strict: {len(warnings)} warning(s)",
            "fix them, or run without --strict to accept them",
            details=warnings,
        )


@main.command()
@click.option("--host", help="Host to set up (default: $GPURUN_HOST, else hosts.yaml's default).")
@click.option(
    "--torch",
    "torch_spec",
    metavar="SPEC",
    help="The torch requirement, used as given with no index of gpurun's (default: the torch gpurun is tested "
    "with, in the build the host's NVIDIA driver runs, or the CPU build where there is no GPU).",
)
@click.option("--pip-arg", "pip_args", multiple=True, metavar="ARG", help="Pass ARG to pip install (repeatable).")
@click.option("--force", is_flag=True, help="Install again even if the host already has the training stack.")
@click.option("-v", "--verbose", is_flag=True, help="Show pip's output as it goes.")
def setup(host, torch_spec, pip_args, force, verbose):
    """Give a host the training stack: a venv in its workdir, used by every run there.

    Needs only Python 3.10+ (with venv) and rsync on the host. Does nothing if the host's
    `python` already has the stack. Prints what it will install and roughly how much it downloads
    before pip starts. Ctrl-C stops pip on the host too and exits with 130; the half-made venv is
    never used, and running setup again carries on where it stopped.

    \b
    Example:
      gpurun setup --host a100
      gpurun setup --host a100 --torch torch==2.13.0+cpu --pip-arg=--extra-index-url=https://download.pytorch.org/whl/cpu
    """
    from launcher.hosts import resolve_host
    from launcher.hostsetup import setup_host
    from launcher.remote import remote_for

    target = resolve_host(_root(), host)
    console = _console()
    lines: list[str] = []
    with console.status(f"setting up {target.name}…") as status:

        def on_log(line: str) -> None:
            lines.append(line)
            if verbose:
                console.print(line, markup=False)
            elif line.strip():
                status.update(f"setting up {target.name}: {line.strip()[:100]}")

        installing: list[str] = []

        def on_plan(line: str) -> None:
            installing.append(line)
            console.print(line, markup=False)

        try:
            report = setup_host(remote_for(target), torch_spec, pip_args, force, on_log, on_plan)
        except KeyboardInterrupt:
            report = None  # said below, once the spinner is gone
        except Exception:
            if not verbose and lines:  # what pip said last is usually why
                console.print("\n".join(lines[-15:]), markup=False)
            raise
    if report is None:
        # 130 as for any Ctrl-C. The host half sees its connection close and stops pip's process group.
        done = "pip is stopped on the host and the venv stays unused" if installing else "nothing was installed"
        click.echo(
            f"setup of {target.name} interrupted: {done}; run gpurun setup --host {target.name} again to carry on",
            err=True,
        )
        sys.exit(130)
    from launcher.render import setup_report_text

    console.print(setup_report_text(target.name, report))


def _progress(console, label: str):
    """A context manager yielding an on_progress(percent, bytes) callback that drives a rich bar."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn

    @contextmanager
    def bar():
        progress = Progress(
            TextColumn(label), BarColumn(), TaskProgressColumn(), DownloadColumn(), console=console, transient=True
        )
        with progress:
            task = progress.add_task(label, total=100)

            def on_progress(percent: int, done_bytes: int) -> None:
                total = done_bytes * 100 / percent if percent else None
                progress.update(task, completed=done_bytes, total=total)

            yield on_progress

    return bar()


if __name__ == "__main__":
    main()
