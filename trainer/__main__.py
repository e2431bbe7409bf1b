"""python -m trainer {run,validate,merge,start,wrap,state,follow,stop} ... — the host side of gpurun.

Only the `run` and `validate` commands import the training stack; the rest are stdlib-only,
so the launcher can ask a host for a run's state even where torch is not installed.
"""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        from trainer.train import run

        return run(rest[0])
    if command == "merge":
        from trainer.merge import merge

        return merge(rest[0])
    if command == "validate":
        from trainer.validate import main as validate

        return validate(rest)
    from trainer import hostside

    return hostside.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
