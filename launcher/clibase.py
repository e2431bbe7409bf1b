"""What every gpurun command shares: the error handler (GpurunError -> `Error:`/`Hint:` and its exit code, never a
traceback), the project and run a command means, its consoles, and --json's one document on stdout."""

import os
from pathlib import Path

import click

from launcher.errors import EXIT_USER, GpurunError


class GpurunGroup(click.Group):
    """Turns GpurunError into `Error: …` / `Hint: …` on stderr and its exit code; never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GpurunError as exc:
            if JSON_OUTPUT["on"]:  # a script reads stdout: the error as JSON there too, the words on stderr as always
                said = {"error": exc.message, "hint": exc.hint, "details": exc.details, "exit_code": exc.exit_code}
                emit_json(said)
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


def project_root() -> Path:
    from launcher.project import find_root

    return find_root()


def open_named_run(run: str | None, allow_not_started: bool = False):
    """The run a command means and its host (launcher.runs.open_run)."""
    from launcher.runs import open_run

    return open_run(project_root(), run, allow_not_started)


JSON_OUTPUT = {"on": False}  # --json: stdout holds one JSON document and nothing else; every word goes to stderr
JSON_HELP = "Print one JSON document on stdout (everything else on stderr)."


def json_mode(on: bool) -> None:
    JSON_OUTPUT["on"] = on


def emit_json(value) -> None:
    import json

    click.echo(json.dumps(value, ensure_ascii=False, default=str))


def console(stderr: bool = False):
    """Where a command's words go: stdout, or stderr when asked (and always under --json)."""
    from launcher.render import make_console

    return make_console(stderr or JSON_OUTPUT["on"])


def progress(console, label: str):
    from launcher.render import progress_bar

    return progress_bar(console, label)
