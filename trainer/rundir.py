"""What the laptop and the host both read: a run directory's file names, the exit codes a run ends with,
the event kinds and the secret names. Standard library only; every other module imports these from here.

    runs/<run-id>/run.json, pid, exit_code, train.log, events.jsonl, output/ ...   (see DESIGN.md)
"""

import signal

RUN_FILE = "run.json"  # what was launched: task, resolved config, host, GPUs, command, versions
PID_FILE = "pid"  # the detached job's process group, with a marker against pid reuse
EXIT_FILE = "exit_code"  # written atomically by the wrapper however the job ends
TRAINER_EXIT_FILE = "trainer_exit"  # each trainer process's own word on how it ended (rank N: trainer_exit.rankN)
STOP_FILE = "stop_requested"  # `gpurun stop` asked: the job's end is `stopped`, not `failed`
ENV_FILE = "env.json"  # secrets and environment for the job, 0600, never on a command line
RESERVE_FILE = ".reserve"  # space kept back so that how the job ended can be written on a full disk
LOG_FILE = "train.log"
EVENTS_FILE = "events.jsonl"
WRAPPER_LOG = "wrapper.log"
OUTPUT_DIR = "output"
SPLIT_FILE = "split.json"  # the batch split a restart after running out of memory trains with
TRACKERS_DIR = "trackers"  # what W&B, trackio and MLflow wrote (task.yaml's `report:`)
LOG_FILES = (LOG_FILE, EVENTS_FILE, RUN_FILE, TRACKERS_DIR)  # what `pull` brings home beside output/

EXIT_STOPPED = 128 + signal.SIGTERM  # 143: the trainer saved a checkpoint and stopped when asked
EXIT_KILLED = 128 + signal.SIGKILL  # 137
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_OOM_RESTART = 75  # out of memory, a smaller split in SPLIT_FILE: the wrapper starts it again (EX_TEMPFAIL)

# events.jsonl's kinds (one JSON object per line; see trainer/events.py)
EVENT_KINDS = (
    "start",
    "memory",  # the memory pre-flight's estimate (bytes), before the weights load
    "train_begin",
    "log",
    "eval",
    "summary",
    "save",
    "phase",
    "eval_suite",
    "stopped",
    "oom",  # out of memory: the split it restarts with
    "error",
    "done",
)

# Secrets that travel to the job in ENV_FILE, never on a command line or in a log; a host's `secret_env` adds more.
SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
