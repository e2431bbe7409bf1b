"""Where the project is: the folder holding hosts.yaml (or .gpurun/), found from the current one."""

import os
from pathlib import Path

HOSTS_FILE = "hosts.yaml"
STATE_DIR = ".gpurun"


def find_root(start: Path | None = None) -> Path:
    """The nearest folder upwards with hosts.yaml or .gpurun/; else the current folder."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / HOSTS_FILE).is_file() or (folder / STATE_DIR).is_dir():
            return folder
    return here


def state_dir(root: Path) -> Path:
    path = root / STATE_DIR
    path.mkdir(exist_ok=True)
    return path
