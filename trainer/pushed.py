"""The trainer copy that runs is the one gpurun pushed. Standard library only.

`python -m trainer` would import the first `trainer` on sys.path: a `trainer/` folder in the login's
home (sys.path[0] is the current directory), or a gpurun pip-installed into the host's Python, could
win over the copy under <workdir>/trainer/<version>/. And a relative PYTHONPATH (a `~/gpurun`
workdir is relative to the login's home) stops resolving once a child runs from the run directory.
So every `python ... trainer` on the host, from the launcher's first command to the DDP workers, is
started through `trainer_argv`: a bootstrap that puts this copy's absolute root first on sys.path.
"""

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent  # .../trainer/<version>/trainer on a host
ROOT = PACKAGE_DIR.parent

# `python -c BOOTSTRAP ROOT ARGS...`: ROOT (relative to the current directory, i.e. the login's home,
# when the launcher sends it) becomes absolute and first on sys.path, ahead of '' and site-packages.
BOOTSTRAP = (
    "import os, sys; sys.path.insert(0, os.path.abspath(sys.argv.pop(1))); "
    "from trainer.__main__ import main; sys.exit(main())"
)


def trainer_argv(python: str, *args: str, root: str | Path = ROOT) -> list[str]:
    """`python -m trainer ARGS`, but always running the trainer copy under `root`."""
    return [python, "-c", BOOTSTRAP, str(root), *args]


def copy_info() -> dict:
    """Where the running trainer lives and which version it is (the folder the launcher pushed it to)."""
    version = ROOT.name if ROOT.parent.name == "trainer" else "source"
    return {"trainer_path": str(PACKAGE_DIR), "trainer_version": version}


def pin_for_children() -> None:
    """Children that run plain `python -m` (torch's spawned workers, say) find this copy too."""
    import os

    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *(os.path.abspath(p) for p in rest)])
    if sys.path[:1] != [str(ROOT)]:
        sys.path.insert(0, str(ROOT))
