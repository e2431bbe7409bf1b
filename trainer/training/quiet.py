"""Library noise goes to debug.log; train.log keeps what a person reads (and real errors).

train.log is read by people and streamed by `gpurun logs -f`. The libraries under the trainer write
into it whatever they like: FutureWarnings about renamed arguments, bitsandbytes' "Failed to load CPU
gemm_4bit_forward from kernels-community", and tqdm bars ("Loading weights", "Writing model shards")
redrawn with carriage returns. Those are kept, in debug.log beside it, for the day they matter; bars
are switched off, since a bar in a file is only its redraws. Tracebacks and library errors still
reach train.log (stderr): they are what a person must see.
"""

import importlib
import logging
import os
import sys
from pathlib import Path

DEBUG_LOG = "debug.log"
NOISE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that give their root logger its own stderr handler and stop propagation there.
OWN_HANDLER_LIBRARIES = {
    "transformers": "transformers.utils.logging",
    "datasets": "datasets.utils.logging",
    "huggingface_hub": "huggingface_hub.utils.logging",
}


def debug_log_name(rank: int) -> str:
    return DEBUG_LOG if rank == 0 else f"debug.rank{rank}.log"


def route_library_noise(debug_log: Path) -> logging.Handler:
    """From now on in this process, library warnings and logging go to `debug_log`, errors also to stderr."""
    # Read by huggingface_hub when imported, and through it by transformers and datasets; the calls
    # below cover the case where one of them was imported already.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    to_file = logging.FileHandler(debug_log, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(NOISE_FORMAT))
    errors = _CurrentStderr()
    errors.setLevel(logging.ERROR)
    errors.setFormatter(logging.Formatter("error (%(name)s): %(message)s"))
    root = logging.getLogger()
    for handler in list(root.handlers):  # a second call (tests run several trainers in one process)
        if getattr(handler, "gpurun_noise", False):
            root.removeHandler(handler)
            handler.close()
    for handler in (to_file, errors):
        handler.gpurun_noise = True
        root.addHandler(handler)
    # warnings.warn (FutureWarning, UserWarning, …) becomes a record of the `py.warnings` logger.
    # (Off first: if something swapped warnings.showwarning back since an earlier call, True alone is a no-op.)
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    for name, module in OWN_HANDLER_LIBRARIES.items():
        _hand_to_root(name, module)
    _progress_bars_off()
    return to_file


class _CurrentStderr(logging.StreamHandler):
    """Whatever sys.stderr is when a record comes (train.log in a run; a test's capture in-process)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _hand_to_root(name: str, module: str) -> None:
    """The library's records go up to the root logger (so to debug.log) instead of its own stderr handler."""
    try:
        library = importlib.import_module(module)  # importing installs its handler, so it can be taken off now
    except ImportError:
        return
    if hasattr(library, "disable_default_handler"):  # transformers installs it lazily, and keeps a reference
        library.disable_default_handler()
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:
            logger.removeHandler(handler)
    logger.propagate = True


def _progress_bars_off() -> None:
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
