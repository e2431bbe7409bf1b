"""python -m trainer {run,validate,merge,infer,export,setup,start,wrap,state,follow,stop,summary} ...: the host side.

Only `run`, `validate`, `merge`, `infer` and `export` import the training stack; the rest are stdlib-only, so the
launcher can ask a host for a run's state even where torch is not installed. When the host's
`python` lacks the stack, those five re-run themselves in the venv `gpurun setup` made.
"""

import importlib
import os
import sys

NEEDS_STACK = ("run", "validate", "merge", "infer", "export")
HOST_COMMANDS = ("start", "wrap", "state", "follow", "stop", "summary")  # the launcher's job control, stdlib only
REEXEC_ENV = "GPURUN_REEXEC"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    command, rest = argv[0], argv[1:]
    from trainer.pushed import pin_for_children, trainer_argv

    pin_for_children()
    if command in NEEDS_STACK:
        from trainer.host.interpreter import no_stack_message, training_python

        python = training_python()
        if python is None:
            message, hint = no_stack_message()
            print(f"error: {message}\nhint: {hint}", file=sys.stderr)
            return 1
        if python != sys.executable and not os.environ.get(REEXEC_ENV):
            # The same trainer copy, in the other interpreter; the guard makes a second hop impossible.
            os.environ[REEXEC_ENV] = "1"
            os.execv(python, trainer_argv(python, *argv))
    if command == "setup":
        from trainer.host.setup import main as setup

        return setup(rest)
    if command == "run":
        from trainer.training.run import run

        return run(rest[0])
    if command == "merge":
        from trainer.training.merge import merge

        return merge(rest[0])
    if command == "export":
        from trainer.training.gguf_export import main as export

        return export(rest)
    if command == "infer":
        from trainer.training.infer import main as infer

        return infer(rest)
    if command == "validate":
        from trainer.training.validate import main as validate

        return validate(rest)
    if command in ("resume-info", "settle"):
        from trainer.host.query import main as query

        return query(argv)
    if command not in HOST_COMMANDS:
        print(f"unknown command {command!r}; one of: run, {', '.join(HOST_COMMANDS)}", file=sys.stderr)
        return 2
    # Each lives in trainer/host/<command>.py as cmd_<command>; only the one asked for is imported.
    handler = getattr(importlib.import_module(f"trainer.host.{command}"), f"cmd_{command}")
    try:
        return handler(rest)
    except KeyboardInterrupt:  # Ctrl-C in `gpurun logs -f` on the local host reaches us too: no traceback
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
