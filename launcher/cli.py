"""gpurun: fine-tune LoRA adapters on GPU machines you reach by SSH.

Commands are thin: parse, call one function, render. Every import that costs (rich's live view,
the sync and launch code) happens inside the command that needs it, so `gpurun --help` is instant
and never loads torch or an SSH library.
"""

import sys

import click

from launcher.clibase import (
    JSON_HELP,
    GpurunGroup,
    emit_json,
    json_mode,
    open_named_run,
    progress,
    project_root,
)
from launcher.clibase import console as out_console
from launcher.errors import GpurunError


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
    from launcher.launch import plan_task_push
    from launcher.launch import push as do_push
    from launcher.render import push_plan_text

    root = project_root()
    pushing = plan_task_push(root, task, host)
    console = out_console()
    if pushing.checked and (line := pushing.checked.cached_line()):
        console.print(line)
    console.print(push_plan_text(pushing.task_dir, pushing.plan))
    with progress(console, f"push {pushing.task_dir.name} → {pushing.host.name}") as on_progress:
        dest = do_push(root, pushing, on_progress)
    console.print(f"pushed [bold]{pushing.task_dir}[/] to {pushing.host.name}:{dest}")


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
    "--force",
    is_flag=True,
    help="Use GPUs someone holds, start a run the memory pre-flight says won't fit; with --resume, allow a --set "
    "that changes the schedule.",
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP + " The run id, host, GPUs.")
def train(task, host, gpus, overrides, experiment, resume, force, as_json):
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
    from launcher.launch import launch, resolve_train

    json_mode(as_json)
    root = project_root()
    request = resolve_train(root, task, host, resume)
    parent = request.parent
    console = out_console()
    with console.status(f"checking and syncing {request.task_dir.name}…"):
        launched = launch(root, request.task_dir, request.host, gpus, overrides, experiment, resume=parent, force=force)
    if line := launched.checked.cached_line():
        console.print(line)
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
    if as_json:
        said = {"run_id": record.run_id, "host": record.host, "gpus": launched.gpus, "task": record.task}
        emit_json({**said, "slurm_job": launched.job_id, "resumed_from": parent.run_id if parent else None})


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
    from launcher import control
    from launcher.render import Dashboard, end_text
    from launcher.runs import exit_code_of

    opened = open_named_run(run)
    record = opened.record
    if not follow:
        sys.stdout.write(control.log_now(opened, tail))
        return
    console = out_console()
    dashboard = Dashboard(console, record.run_id, quiet_log=False)
    dashboard.seed(record.step, record.total_steps)  # a resumed run shows its step N/TOTAL from the start
    try:
        state = control.follow_to_end(opened, dashboard, tail, console.print)
    except KeyboardInterrupt:
        console.print(f"\ndetached; {record.run_id} goes on on {record.host}. Reattach: gpurun logs -f {record.run_id}")
        sys.exit(0)
    code = exit_code_of(state)
    console.print(end_text(state))
    sys.exit(code)


@main.command()
@click.argument("run", required=False)
@click.option("--checkpoints", is_flag=True, help="Also bring the checkpoint-* folders.")
@click.option("--partial", is_flag=True, help="Pull what exists now, even while the run goes on.")
@click.option("--watch", is_flag=True, help="Keep fetching new checkpoints while the run goes on.")
@click.option("--interval", default=30.0, show_default=True, help="Seconds between fetches with --watch.")
@click.option("--force", is_flag=True, help="Overwrite local files you changed since the last pull.")
@click.option("--merged", is_flag=True, help="Also bring output/merged/ (written by gpurun merge).")
@click.option("--gguf", is_flag=True, help="Also bring output/gguf/ (written by gpurun export).")
def pull(run, checkpoints, partial, watch, interval, force, merged, gguf):
    """Bring a run's adapter, tokenizer, state and logs into tasks/<task>/runs/<run-id>/.

    RUN defaults to the latest run. Never deletes a local file; never overwrites one you changed
    since the last pull (unless --force). Interrupted transfers resume.

    \b
    Example:
      gpurun pull --checkpoints
      gpurun pull --watch --interval 60
    """
    from launcher.pull import Pull
    from launcher.pull import pull as do_pull
    from launcher.pull import watch as do_watch
    from launcher.render import shown_path

    opened = open_named_run(run)
    console = out_console()
    extras = tuple(name for name, asked in (("merged", merged), ("gguf", gguf)) if asked)
    job = Pull(opened, checkpoints, force, extras, lambda label: progress(console, label))
    if watch:
        state = do_watch(job, interval, console.print)
        if state is None:
            return
    else:
        state = do_pull(job, partial)
    record = opened.record
    adapter = job.dest / "adapter_model.safetensors"
    if adapter.exists():
        console.print(f"adapter: [bold]{shown_path(opened.root, adapter)}[/]")
    elif not job.checkpoints and state.get("state") in ("stopped", "failed", "lost"):
        console.print(
            f"[yellow]no final adapter[/]: the run ended {state.get('state')} before saving one; "
            f"its checkpoints come with: gpurun pull {record.run_id} --checkpoints"
        )
    for exported in sorted((job.dest / "gguf").glob("*.gguf")) if gguf else ():
        console.print(f"gguf: [bold]{shown_path(opened.root, exported)}[/] ({exported.stat().st_size / 2**20:.1f} MB)")
    console.print(f"pulled {record.run_id} ({state.get('state')}) into {shown_path(opened.root, job.dest)}")
    for offline in sorted((job.dest / "trackers" / "wandb").glob("offline-run-*")):
        console.print(f"W&B offline run: upload it with: wandb sync {shown_path(opened.root, offline)}", markup=False)


@main.command()
@click.argument("run", required=False)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def status(run, as_json):
    """Show a run's state (running / succeeded / failed / stopped / lost), as its host reports it.

    \b
    Example:
      gpurun status hr-20260101-120000-ab12
    """
    from launcher import control
    from launcher.render import runs_table

    json_mode(as_json)
    row, node_lines = control.status(open_named_run(run, allow_not_started=True))
    if as_json:
        from launcher.render import json_row

        emit_json({**json_row(row), "nodes": node_lines})
        return
    console = out_console()
    console.print(runs_table([row]))
    for line in node_lines:
        console.print(line)


@main.command()
@click.option("--limit", default=20, show_default=True, help="How many runs to show, newest first.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def runs(limit, as_json):
    """List this project's runs with their state from each host.

    \b
    Example:
      gpurun runs --limit 5
    """
    from launcher.render import runs_table
    from launcher.runs import History, refresh_runs

    json_mode(as_json)
    root = project_root()

    def warn(text: str) -> None:
        out_console(stderr=True).print(f"[yellow]warning:[/] {text}")

    rows = [r.__dict__ for r in refresh_runs(root, History(root), limit, warn)]
    if as_json:
        from launcher.render import json_row

        emit_json([json_row(row) for row in rows])
        return
    if not rows:
        out_console().print("no runs yet: gpurun train tasks/demo")
        return
    out_console().print(runs_table(rows))


@main.command()
@click.argument("run", required=False)
@click.option("--grace", default=60.0, show_default=True, help="Seconds to let the trainer save before SIGKILL.")
def stop(run, grace):
    """Stop a run: SIGTERM (the trainer saves a checkpoint), SIGKILL after --grace seconds.

    \b
    Example:
      gpurun stop --grace 120
    """
    from launcher import control
    from launcher.runs import FINAL_STATES

    opened = open_named_run(run)
    record = opened.record
    console = out_console()
    if record.state in FINAL_STATES:  # a final state never changes: no round trip, no false "waiting"
        console.print(f"{record.run_id}: already {record.state}, nothing to stop")
        return
    # The host's stop returns once the trainer has saved and exited: up to --grace seconds of silence.
    waiting = f"stopping {record.run_id}: waiting for the checkpoint at the next step (SIGKILL after {grace:g}s)…"
    if not console.is_terminal:
        console.print(waiting)  # piped: one line; on a terminal, the spinner below says it
    with console.status(waiting):
        state = control.stop(opened, grace)
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
    from launcher import control

    opened = open_named_run(run)
    record = opened.record
    console = out_console()
    with console.status(f"merging {record.run_id} on {record.host}…"):
        said = control.merge(opened)
    console.print(said)
    console.print(f"bring it home: gpurun pull {record.run_id} --merged")


@main.command()
@click.argument("task", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Check with this override.")
@click.option("--exp", "experiment", help="Check with tasks/<task>/experiments/<NAME>.yaml overlaid.")
@click.option("--show", default=0, metavar="N", help="Render N examples with the trained tokens highlighted.")
@click.option("--strict", is_flag=True, help="Exit 1 on any warning too (notices, truncated examples): for CI.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Estimate the peak memory of one process there.")
@click.option("--gpu-memory", metavar="SIZE", help="Estimate for a GPU with SIZE free (24GB); exit 1 if it won't fit.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def validate(task, overrides, experiment, show, strict, device, gpu_memory, as_json):
    """Check a task's config and every data row, on this machine, without touching a host.

    TASK defaults to the task pushed (or trained) last.

    With the training stack installed here (and the tokenizer at hand: always for builtin:tiny),
    also token lengths against max_length and the loss mask of every example.

    \b
    Example:
      gpurun validate tasks/hr --set training.learning_rate=1e-4
      gpurun validate tasks/demo --show 2
      gpurun validate tasks/hr --strict
      gpurun validate tasks/hr --gpu-memory 24GB
    """
    from launcher.checks import check_task, token_checks, warnings_of
    from launcher.launch import resolve_task_dir
    from launcher.render import plain, token_report_text
    from launcher.runs import History

    json_mode(as_json)
    root = project_root()
    task_dir = resolve_task_dir(root, task, History(root))
    checked = check_task(task_dir, overrides, experiment, root=root)
    console = out_console()
    for notice in checked.notices:
        console.print(f"[yellow]notice:[/] {plain(notice)}")
    tokens: dict = {}
    report = token_checks(root, task_dir, overrides, experiment, show=show, config=checked.config, cached=tokens)
    checked.tokens_cached = bool(tokens.get("hit"))
    if line := checked.cached_line():
        console.print(line)
    counts = ", ".join(f"{n} {split}" for split, n in checked.counts.items() if n)
    config = checked.config
    console.print(f"[green]ok[/] {plain(task_dir)}: {config.task} on {plain(config.base_model)}; rows: {counts}")
    if report is None:
        console.print("token checks: the training stack is not installed here; the host runs them")
    else:
        console.print(token_report_text(report))
    memory = None
    if device or gpu_memory:
        from launcher.fit import memory_line

        longest = (report or {}).get("lengths", {}).get("max")
        memory = memory_line(config, longest, device or "cuda", gpu_memory)
        console.print(memory)
    warnings = warnings_of(checked, report)
    if as_json and not (strict and warnings):  # refused: the error is the one document (its details: the warnings)
        said = {"task": str(task_dir), "kind": config.task, "base_model": config.base_model, "rows": checked.counts}
        said.update(notices=checked.notices, warnings=warnings, tokens=report, memory=memory)
        emit_json({"ok": True, **said})
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
@click.option(
    "--with",
    "with_",
    multiple=True,
    type=click.Choice(["wandb", "trackio", "mlflow"]),
    help="Add a tracker that task.yaml's `report:` names (repeatable); added to a host that has the stack already.",
)
@click.option("--fast", is_flag=True, help="Add the GPU kernels (liger-kernel, kernels) where there is an NVIDIA GPU.")
@click.option("-v", "--verbose", is_flag=True, help="Show pip's output as it goes.")
def setup(host, torch_spec, pip_args, force, with_, fast, verbose):
    """Give a host the training stack: a venv in its workdir, used by every run there.

    Needs only Python 3.10+ (with venv) and rsync on the host. Does nothing if the host's
    `python` already has the stack. Prints what it will install and roughly how much it downloads
    before pip starts. Ctrl-C stops pip on the host too and exits with 130; the half-made venv is
    never used, and running setup again carries on where it stopped.

    \b
    Example:
      gpurun setup --host a100
      gpurun setup --host a100 --with wandb --fast
      gpurun setup --host a100 --torch torch==2.13.0+cpu --pip-arg=--extra-index-url=https://download.pytorch.org/whl/cpu
    """
    from launcher.hosts import resolve_host
    from launcher.hostsetup import setup_host
    from launcher.remote import remote_for

    target = resolve_host(project_root(), host)
    console = out_console()
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
            report = setup_host(remote_for(target), torch_spec, pip_args, force, on_log, on_plan, with_, fast)
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


if __name__ == "__main__":
    main()


def _register_results_commands() -> None:
    """infer, compare, export and plot live in launcher/cli_results.py (cli.py holds the loop's commands)."""
    from launcher.cli_results import compare, export, infer, plot

    for command in (infer, compare, export, plot):
        main.add_command(command)


_register_results_commands()
