"""One training run, top to bottom, in named steps: start -> read the task and data -> find a checkpoint ->
base model and tokenizer -> check the tokens -> load the model -> train -> save -> try it out -> done.

Runs on the host as `python -m trainer run RUN_DIR`. RUN_DIR holds run.json (written by the
launcher: the resolved task config) and receives train.log, events.jsonl and output/.
The host layout is <workdir>/runs/<run-id>/ beside <workdir>/tasks/<task>/.
"""

import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainer.builtin.tiny import default_cache_dir
from trainer.checkpoints import latest_complete_checkpoint
from trainer.events import EventWriter
from trainer.pushed import copy_info
from trainer.rundir import (
    EVENTS_FILE,
    EXIT_INTERRUPTED,
    EXIT_STOPPED,
    OUTPUT_DIR,
    RUN_FILE,
    SECRET_NAMES,
    TRACKERS_DIR,
)
from trainer.task.loading import config_from_dict
from trainer.task.problems import TaskError
from trainer.task.schema import TaskConfig
from trainer.task.splits import load_task_data
from trainer.testpause import step_seconds
from trainer.training.callbacks import events_callback, phase_progress, slow_steps_callback, stop_callback
from trainer.training.model import load_model, load_tokenizer, name_the_base, resolve_base_model
from trainer.training.oom import apply_split, inject_oom, out_of_memory
from trainer.training.quiet import debug_log_name, route_library_noise
from trainer.training.tryout import eval_suite_beside_base, write_sample_replies

DIGEST_ENV = "GPURUN_TRAINED_DIGEST"  # tests: each process records a hash of the weights it trained


class StopRequest:
    """SIGTERM (from `gpurun stop`) asks for a checkpoint at the next step end, then a clean exit."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)
        # The wrapper starts us with SIGTERM blocked: a stop that came while we imported is delivered here, now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    def _request(self, _signum, _frame):
        self.requested = True


def run(run_dir: Path) -> int:
    """The run, then the trainer's own record of how it ended (trainer_exit): the run's state stays truthful when
    the wrapper that writes exit_code was killed alone. A full disk is said as such, with the path."""
    from trainer.host.disk import is_disk_full, note_disk_full
    from trainer.host.exits import write_trainer_exit

    run_dir = Path(run_dir).resolve()
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # torchrun's workers share its output (train.log, rank 0's): ranks >= 1 write their own log
        own_log(run_dir / f"train.rank{rank}.log")
    code = 1  # what an exception on the way out makes of the process
    try:
        code = _run(run_dir)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        raise
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        raise
    except Exception as exc:
        if not is_disk_full(exc, run_dir):
            raise
        if rank == 0:  # instead of a traceback that could not be written anyway
            note_disk_full(run_dir, getattr(exc, "filename", None))
    finally:
        write_trainer_exit(run_dir, rank, code)
    return code


def own_log(path: Path) -> None:
    """This process's stdout and stderr (and its children's) go to path, appended, from here on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


@dataclass
class Run:
    """What one run's steps hand on to the next (as a torchtune recipe keeps it on self)."""

    run_dir: Path
    record: dict  # run.json
    rank: int
    world: int
    stop: StopRequest
    events: EventWriter
    config: TaskConfig | None = None
    task_dir: Path | None = None
    splits: dict = field(default_factory=dict)
    resume_from: Path | None = None
    base: str = ""  # what from_pretrained loads: a hub id or a local folder
    tokenizer: object = None
    tokenized: object = None  # SFT: the datasets the checks tokenized, reused by the trainer (and cached)
    labels: list | None = None  # classification's label names
    model: object = None
    trainer: object = None
    stopper: object = None
    result: object = None  # what trainer.train() returned
    sharded: bool = False  # FSDP / ZeRO over several processes: each holds a part of the weights
    suite_accuracies: dict = field(default_factory=dict)
    trackers: object = None  # trainer/training/trackers.py's, on rank 0 when `report:` names any

    @property
    def workdir(self) -> Path:
        return self.run_dir.parent.parent

    @property
    def output_dir(self) -> Path:
        return self.run_dir / OUTPUT_DIR


def _run(run_dir: Path) -> int:
    """The steps in order. Each returns None to go on, or the exit code the run ends with there."""
    run = start(run_dir)
    steps = (
        stopped_while_starting,
        read_task_and_data,
        start_trackers,
        find_checkpoint,
        prepare_base_and_tokenizer,
        check_tokens,
        fit_in_memory,
        load_the_model,
        train,
        stopped_in_training,
        leave_the_rest_to_rank_0,
        save_outputs,
        try_out,
    )
    try:
        for step in steps:
            code = step(run)
            if code is not None:
                return code
        return finish(run)
    finally:
        if run.trackers is not None:  # a run that failed or stopped ends its trackers' runs too
            run.trackers.close()


def start(run_dir: Path) -> Run:
    """Take SIGTERM, read run.json, send the libraries' noise to debug.log, and say the run has started."""
    stop = StopRequest()
    record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    # With several GPUs the wrapper starts one process per GPU (DDP); rank 0 speaks for the run.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    route_library_noise(run_dir / debug_log_name(rank))  # before the libraries load: train.log is for people
    if "trackio" in (record.get("config") or {}).get("report", []):  # trackio reads it once, when imported (TRL does)
        os.environ.setdefault("TRACKIO_DIR", str(run_dir / TRACKERS_DIR / "trackio"))
    events = EventWriter(run_dir / EVENTS_FILE if rank == 0 else None)
    if world > 1:  # which process this log is, as the launcher (torchrun) numbered it
        print(f"process: rank {rank} of {world} (local rank {os.environ.get('LOCAL_RANK', rank)})", flush=True)
    # Names only, never values: proof that the secrets arrived, safe to log.
    secrets = sorted(name for name in os.environ if name in SECRET_NAMES or name in record.get("secret_env", []))
    events.emit(
        "start",
        run_id=record["run_id"],
        task=record["task"],
        secrets=secrets,
        python=sys.executable,
        processes=world,
        **copy_info(),
    )
    return Run(run_dir=run_dir, record=record, rank=rank, world=world, stop=stop, events=events)


def stopped_while_starting(run: Run) -> int | None:
    if run.stop.requested:  # nothing to load, nothing to save
        run.events.emit("stopped", step=0, checkpoint=None)
        return EXIT_STOPPED
    return None


def read_task_and_data(run: Run) -> int | None:
    """The task, checked again here: the host's files are what will actually be trained on."""
    run.config = config_from_dict(run.record["config"])
    run.task_dir = run.workdir / "tasks" / run.record["task"]
    split = apply_split(run.run_dir, run.config)
    if split is not None:
        batch, accumulation = split["per_device_train_batch_size"], split["gradient_accumulation_steps"]
        print(f"split after running out of memory: per-device batch {batch}, accumulation {accumulation}", flush=True)
    from trainer.training.recipes import host_problems

    refused = host_problems(run.config, run.task_dir)  # distributed.strategy against this host: CUDA, deepspeed
    if refused:
        return refuse(run.events, refused)
    notices: list[str] = []  # rows taken as a peer writes them (arguments encoded twice, calls without tools)
    try:
        run.splits = load_task_data(run.task_dir, run.config, notices=notices)
    except TaskError as exc:
        return fail(run.events, exc.problems, "data")
    for notice in notices:
        print(f"notice: {notice}", flush=True)
    counts = ", ".join(f"{len(rows)} {name}" for name, rows in run.splits.items() if rows)
    print(f"data: {counts} rows", flush=True)
    return None


def start_trackers(run: Run) -> None:
    """W&B, trackio, MLflow as `report:` names them (TensorBoard is transformers' own), fed from the events."""
    if run.rank != 0 or not set(run.config.report) - {"tensorboard"}:
        return
    from trainer.task.loading import config_to_dict
    from trainer.training.trackers import Trackers

    record = run.record
    context = {
        "config": config_to_dict(run.config),
        "run_id": record["run_id"],
        "task": record["task"],
        "experiment": record.get("experiment"),
        "overrides": record.get("overrides", []),
        "name": run.config.wandb.name or record.get("experiment") or record["run_id"],
    }
    run.trackers = Trackers(run.config.report, context, run.run_dir, say)
    run.events.listeners.append(run.trackers.on_event)


def find_checkpoint(run: Run) -> int | None:
    """Where training resumes: the parent run's last complete checkpoint (--resume), or this run's own."""
    if run.record.get("resume_from"):
        parent_output = run.workdir / "runs" / run.record["resume_from"] / OUTPUT_DIR
        run.resume_from = latest_complete_checkpoint(parent_output)
        if run.resume_from is None:
            return fail(run.events, [f"no complete checkpoint in {parent_output}"], "resume")
        print(f"resuming from {run.resume_from}", flush=True)
    own = latest_complete_checkpoint(run.output_dir)
    if own is not None:
        # A run that starts with a checkpoint of its own is a restart of itself (Slurm requeued it near its
        # time limit): it continues from there, and ends where the uninterrupted run would have.
        run.resume_from = own
        print(f"restarted: continuing from {own}", flush=True)
    return None


def prepare_base_and_tokenizer(run: Run) -> None:
    """bf16 and checkpointing decided for this machine (when the task leaves them unset), the base model found
    (builtin:tiny built into the cache), and its tokenizer loaded."""
    from trainer.training.recipes import kernel_choices, on_this_machine

    for line in kernel_choices(run.config):  # before on_this_machine decides them silently
        print(line, flush=True)
    t = on_this_machine(run.config).training
    print(
        f"bf16: {'on' if t.bf16 else 'off'}, gradient checkpointing: {'on' if t.gradient_checkpointing else 'off'}",
        flush=True,
    )
    run.base = resolve_base_model(run.config, cache_dir=default_cache_dir(fallback=run.workdir / "cache" / "models"))
    print(f"base model: {run.config.base_model} ({run.base})", flush=True)
    run.tokenizer = load_tokenizer(run.base)


def check_tokens(run: Run) -> int | None:
    """What each example will train on, and lora.target_modules against the model: refused before it loads."""
    config = run.config
    if config.task == "sft":
        from trainer.training.tokencache import checked_tokens

        cache_root = run.workdir / "cache" / "tokenized"
        problems, run.tokenized = checked_tokens(config, run.tokenizer, run.splits, run.task_dir, cache_root, say)
    else:
        problems = token_problems(config, run.tokenizer, run.splits)
    from trainer.training.validate import module_problems

    problems += module_problems(config, run.base)  # lora.target_modules, from config.json before the weights download
    if problems:
        return fail(run.events, problems, "token")
    return None


def fit_in_memory(run: Run) -> int | None:
    """The peak memory one process will need (trainer/training/memory.py), said before the weights load; on a GPU,
    a run that cannot fit in its free memory is refused with the changes that would fit, unless started --force."""
    from trainer.training.fitting import memory_preflight

    checked = memory_preflight(run.config, run.base, run.tokenized, run.world, run.record.get("force", False))
    if checked is None:
        return None
    print(f"memory: {checked.line}", flush=True)
    run.events.emit("memory", **checked.event())
    if run.rank == 0:
        record_estimate(run.run_dir, checked.event())
    if checked.refusal is not None:
        return refuse(run.events, [checked.refusal])
    return None


def record_estimate(run_dir: Path, memory: dict) -> None:
    """The estimate joins run.json (`memory`, bytes), where compare and a pulled run find it. The file keeps its time:
    the host's state reads a young run.json as a start still in progress."""
    from trainer.host.files import write_atomic

    path = run_dir / RUN_FILE
    record, stat = json.loads(path.read_text(encoding="utf-8")), path.stat()
    write_atomic(path, json.dumps({**record, "memory": memory}, indent=2, ensure_ascii=False))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def load_the_model(run: Run) -> int | None:
    """The base model (a classifier's head named after the labels); a stop asked meanwhile ends the run here."""
    if run.config.task == "classification":
        from trainer.training.recipes import label_names

        run.labels = label_names(run.splits["train"])
    labels = run.labels
    run.model = load_model(run.config, run.base, num_labels=len(labels) if labels else None)
    q = run.config.quantization
    if q is not None and (q.load_in_4bit or q.load_in_8bit):  # the only other sign would be the weights' size
        bits = f"4 bit ({q.bnb_4bit_quant_type})" if q.load_in_4bit else "8 bit"
        print(f"base model loaded in {bits} by bitsandbytes (QLoRA)", flush=True)
    if labels:
        run.model.config.id2label = dict(enumerate(labels))
        run.model.config.label2id = {name: i for i, name in enumerate(labels)}
        run.model.config.pad_token_id = run.tokenizer.pad_token_id
    if run.stop.requested:
        run.events.emit("stopped", step=0)
        return EXIT_STOPPED
    return None


def train(run: Run) -> int | None:
    """Train. Out of memory: the exit code that has the wrapper restart it smaller (trainer/training/oom.py)."""
    import torch

    from trainer.training.recipes import build_trainer

    run.stopper = stop_callback(lambda: run.stop.requested)
    callbacks = [events_callback(run.events, lambda ckpt: name_the_base(ckpt, run.config)), run.stopper]
    if step_seconds():
        callbacks.append(slow_steps_callback(step_seconds()))
    run.trainer = build_trainer(
        run.config,
        run.model,
        run.tokenizer,
        run.splits,
        run.output_dir,
        callbacks,
        run.tokenized,
        task_dir=run.task_dir,
    )
    inject_oom(run.trainer.model)
    try:
        run.result = run.trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    except torch.OutOfMemoryError:
        return out_of_memory(run.run_dir, run.config, run.trainer.state.global_step + 1, run.rank)
    if os.environ.get(DIGEST_ENV):
        write_trained_digest(run.trainer.model, run.run_dir / f"trained_digest.rank{run.rank}")


def stopped_in_training(run: Run) -> int | None:
    """`gpurun stop` during training: the checkpoint the stop saved is where a --resume continues."""
    if not (run.stop.requested or run.stopper.stopped):
        return None
    step = run.trainer.state.global_step
    checkpoint = latest_complete_checkpoint(run.output_dir)
    run.events.emit("stopped", step=step, checkpoint=checkpoint.name if checkpoint else None)
    print(f"stopped at step {step}; checkpoint: {checkpoint}", flush=True)
    return EXIT_STOPPED


def leave_the_rest_to_rank_0(run: Run) -> int | None:
    """The model is rank 0's to save and try out; the other processes end here."""
    from trainer.training.model import shards_weights

    run.sharded = shards_weights(run.config) and run.world > 1
    if run.rank == 0:
        return None
    if run.sharded:  # gathering the parts to save them takes every process (only rank 0 writes)
        run.trainer.save_model(str(run.output_dir))
    return 0


def save_outputs(run: Run) -> None:
    """What `gpurun pull` brings home: adapter, tokenizer, state, resolved config (and a classifier's labels)."""
    output_dir = run.output_dir
    saved = phase_progress(run.events, "saving", 1, f"writing the adapter, tokenizer and trainer state to {output_dir}")
    run.trainer.save_model(str(output_dir))
    name_the_base(output_dir, run.config)
    run.tokenizer.save_pretrained(str(output_dir))
    run.trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
    (output_dir / "task_config.json").write_text(json.dumps(run.record["config"], indent=2, ensure_ascii=False))
    if run.labels:
        (output_dir / "labels.json").write_text(json.dumps(run.labels, ensure_ascii=False))
    saved(1)


def try_out(run: Run) -> None:
    """How it does: sample generations, and the eval suite against its before-training figure."""
    if run.sharded:  # rank 0 alone cannot run a model whose weights are spread over processes that have ended
        print(
            "samples and eval suite: skipped (the model is sharded across processes); try the pulled adapter",
            flush=True,
        )
        return
    model, config = run.trainer.model, run.config
    if config.task != "classification" and config.samples:
        write_sample_replies(config, model, run.tokenizer, run.splits, run.output_dir, run.events)
    step = run.trainer.state.global_step
    run.suite_accuracies = eval_suite_beside_base(config, model, run.tokenizer, run.splits, run.events, step)


def finish(run: Run) -> int:
    """The `done` event, with the run's final figures: train loss, last eval loss, eval-suite accuracies."""
    state = run.trainer.state
    final = {"train_loss": run.result.training_loss}
    evals = [e for e in state.log_history if "eval_loss" in e]
    if evals:
        final["eval_loss"] = evals[-1]["eval_loss"]
    final.update(run.suite_accuracies)
    run.events.emit("done", step=state.global_step, total_steps=state.max_steps, **final)
    print(f"saved adapter to {run.output_dir}", flush=True)
    return 0


def say(line: str) -> None:
    print(line, flush=True)


def write_trained_digest(model, path: Path) -> None:
    """sha256 of the trained parameters (by name, in order): equal across DDP processes when they stayed in step."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    path.write_text(digest.hexdigest() + "\n")


def token_problems(config: TaskConfig, tokenizer, splits: dict) -> list:
    """The token checks of the recipes that tokenize on their own (preference, classification): lengths."""
    from trainer.training.tokens import token_report

    report = token_report(splits["train"] + splits["eval"], tokenizer, config)
    summary = report.summary(config.training.max_length)
    if summary:
        print(summary, flush=True)
    return report.problems


def refuse(events: EventWriter, problems: list) -> int:
    """The run cannot go on this host: each problem and its hint in train.log, and the run's error event."""
    for problem in problems:
        print(f"error: {problem}", flush=True)
        print(f"hint: {problem.hint}", flush=True)
    first = problems[0]
    events.emit("error", message=str(first), hint=first.hint, problems=[str(p) for p in problems])
    return 1


def fail(events: EventWriter, problems: list, what: str) -> int:
    for problem in problems:
        print(f"error: {problem}", flush=True)
    events.emit("error", message=f"{len(problems)} {what} problem(s)", problems=[str(p) for p in problems])
    return 1
