"""One training run, top to bottom: read the run -> check data and tokens -> load model -> train -> save.

Runs on the host as `python -m trainer run RUN_DIR`. RUN_DIR holds run.json (written by the
launcher: the resolved task config) and receives train.log, events.jsonl and output/.
The host layout is <workdir>/runs/<run-id>/ beside <workdir>/tasks/<task>/.
"""

import json
import os
import signal
import sys
from pathlib import Path

from trainer.builtin.tiny import default_cache_dir
from trainer.checkpoints import latest_complete_checkpoint
from trainer.events import EventWriter, events_callback, phase_progress, stop_callback
from trainer.pushed import copy_info
from trainer.rundir import EVENTS_FILE, EXIT_INTERRUPTED, EXIT_STOPPED, RUN_FILE, SECRET_NAMES
from trainer.task.config import TaskConfig, TaskError, config_from_dict
from trainer.task.data import load_task_data
from trainer.training.model import load_model, load_tokenizer, name_the_base, resolve_base_model
from trainer.training.quiet import debug_log_name, route_library_noise

OUTPUT_DIR = "output"
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
    from trainer.host.hostside import is_disk_full, note_disk_full, write_trainer_exit

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


def _run(run_dir: Path) -> int:
    workdir = run_dir.parent.parent
    stop = StopRequest()
    record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    # With several GPUs the wrapper starts one process per GPU (DDP); rank 0 speaks for the run.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    route_library_noise(run_dir / debug_log_name(rank))  # before the libraries load: train.log is for people
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
    if stop.requested:  # stopped while starting: nothing to load, nothing to save
        events.emit("stopped", step=0, checkpoint=None)
        return EXIT_STOPPED

    # 1. The task, checked again here: the host's files are what will actually be trained on.
    config = config_from_dict(record["config"])
    task_dir = workdir / "tasks" / record["task"]
    from trainer.training.recipes import host_problems

    refused = host_problems(config, task_dir)  # distributed.strategy against this host: CUDA, deepspeed
    if refused:
        return refuse(events, refused)
    try:
        splits = load_task_data(task_dir, config)
    except TaskError as exc:
        return fail(events, exc.problems, "data")
    counts = ", ".join(f"{len(rows)} {name}" for name, rows in splits.items() if rows)
    print(f"data: {counts} rows", flush=True)
    resume_from = None
    if record.get("resume_from"):
        parent_output = workdir / "runs" / record["resume_from"] / OUTPUT_DIR
        resume_from = latest_complete_checkpoint(parent_output)
        if resume_from is None:
            return fail(events, [f"no complete checkpoint in {parent_output}"], "resume")
        print(f"resuming from {resume_from}", flush=True)
    own = latest_complete_checkpoint(run_dir / OUTPUT_DIR)
    if own is not None:
        # A run that starts with a checkpoint of its own is a restart of itself (Slurm requeued it near its
        # time limit): it continues from there, and ends where the uninterrupted run would have.
        resume_from = own
        print(f"restarted: continuing from {own}", flush=True)

    # 2. Tokenizer, and what each example will train on: refuse before loading the model.
    from trainer.training.recipes import on_this_machine

    t = on_this_machine(config).training  # bf16 and checkpointing left unset: decided here, for this machine
    print(
        f"bf16: {'on' if t.bf16 else 'off'}, gradient checkpointing: {'on' if t.gradient_checkpointing else 'off'}",
        flush=True,
    )
    base = resolve_base_model(config, cache_dir=default_cache_dir(fallback=workdir / "cache" / "models"))
    print(f"base model: {config.base_model} ({base})", flush=True)
    tokenizer = load_tokenizer(base)
    tokenized = None  # SFT: the datasets the checks tokenized, reused by the trainer (and by the next run: cached)
    if config.task == "sft":
        from trainer.training.tokencache import checked_tokens

        problems, tokenized = checked_tokens(config, tokenizer, splits, task_dir, workdir / "cache" / "tokenized", say)
    else:
        problems = check_tokens(config, tokenizer, splits)
    from trainer.training.validate import module_problems

    problems += module_problems(config, base)  # lora.target_modules, from config.json before the weights download
    if problems:
        return fail(events, problems, "token")

    # 3. Model.
    labels = None
    if config.task == "classification":
        from trainer.training.recipes import label_names

        labels = label_names(splits["train"])
    model = load_model(config, base, num_labels=len(labels) if labels else None)
    if labels:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
        model.config.pad_token_id = tokenizer.pad_token_id
    if stop.requested:
        events.emit("stopped", step=0)
        return EXIT_STOPPED

    # 4. Train.
    from trainer.training.recipes import build_trainer

    output_dir = run_dir / OUTPUT_DIR
    stopper = stop_callback(lambda: stop.requested)
    trainer = build_trainer(
        config,
        model,
        tokenizer,
        splits,
        output_dir,
        [events_callback(events, lambda ckpt: name_the_base(ckpt, config)), stopper],
        tokenized,
        task_dir=task_dir,
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if os.environ.get(DIGEST_ENV):
        write_trained_digest(trainer.model, run_dir / f"trained_digest.rank{rank}")
    if stop.requested or stopper.stopped:
        checkpoint = latest_complete_checkpoint(output_dir)
        events.emit("stopped", step=trainer.state.global_step, checkpoint=checkpoint.name if checkpoint else None)
        print(f"stopped at step {trainer.state.global_step}; checkpoint: {checkpoint}", flush=True)
        return EXIT_STOPPED
    from trainer.training.model import shards_weights

    sharded = shards_weights(config) and world > 1  # FSDP / ZeRO: each process holds a part of the weights
    if rank != 0:
        if sharded:  # gathering the parts to save them takes every process (only rank 0 writes)
            trainer.save_model(str(output_dir))
        return 0  # the model is rank 0's to save and try out

    # 5. Save what `gpurun pull` brings home: adapter, tokenizer, state, resolved config.
    saved = phase_progress(events, "saving", 1, f"writing the adapter, tokenizer and trainer state to {output_dir}")
    trainer.save_model(str(output_dir))
    name_the_base(output_dir, config)
    tokenizer.save_pretrained(str(output_dir))
    trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
    (output_dir / "task_config.json").write_text(json.dumps(record["config"], indent=2, ensure_ascii=False))
    if labels:
        (output_dir / "labels.json").write_text(json.dumps(labels, ensure_ascii=False))
    saved(1)
    final = {"train_loss": result.training_loss}
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if evals:
        final["eval_loss"] = evals[-1]["eval_loss"]

    # 6. How it does: sample generations, and the eval suite against its before-training figure.
    if sharded:  # rank 0 alone cannot run a model whose weights are spread over processes that have ended
        print(
            "samples and eval suite: skipped (the model is sharded across processes); try the pulled adapter",
            flush=True,
        )
    if config.task != "classification" and config.samples and not sharded:
        from trainer.training.evaluate import sample_rows, write_samples

        prompts = splits["eval"] or splits["test"] or splits["train"]
        count = len(sample_rows(prompts, config.samples))
        advance = phase_progress(events, "samples", count, f"generating {count} sample replies to eval prompts")
        written = write_samples(
            trainer.model, tokenizer, prompts, config.samples, output_dir / "samples.jsonl", on_progress=advance
        )
        print(f"wrote {written} sample generations to {output_dir / 'samples.jsonl'}", flush=True)
    suite = None if sharded else run_eval_suite(config, trainer.model, tokenizer, splits, events, "eval_suite")
    if suite is not None:
        from trainer.training.evaluate import score_text, score_warning

        base = None
        if hasattr(trainer.model, "disable_adapter"):  # the base model is the adapter switched off
            # (measured after training: generating before it slowed the CPU training loop 15x here)
            with trainer.model.disable_adapter():
                base = run_eval_suite(config, trainer.model, tokenizer, splits, events, "baseline")
        # the base model's figures beside the trained one's: baseline_accuracy, baseline_arguments_accuracy, ...
        baseline = {"baseline_accuracy": None}
        baseline.update({f"baseline_{k}": v for k, v in (base or {}).items() if k.endswith(("accuracy", "parsed"))})
        warning = score_warning(suite, config.eval_suite.json_field)
        extra = {"warning": warning} if warning else {}
        events.emit("eval_suite", step=trainer.state.global_step, **baseline, **suite, **extra)
        before = f" (base model without the adapter: {score_text(base)})" if base else ""
        print(f"eval suite: {score_text(suite)}{before}", flush=True)
        if warning:
            print(f"warning: {warning}", flush=True)
        final.update({k: v for k, v in suite.items() if k.endswith("accuracy")})
    events.emit("done", step=trainer.state.global_step, total_steps=trainer.state.max_steps, **final)
    print(f"saved adapter to {output_dir}", flush=True)
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


def check_tokens(config: TaskConfig, tokenizer, splits: dict) -> list:
    from trainer.training.tokens import token_report

    report = token_report(splits["train"] + splits["eval"], tokenizer, config)
    lengths = report.percentiles()
    if lengths:
        shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
        print(f"tokens per example: {shown}; {report.truncated} truncated at {config.training.max_length}", flush=True)
    return report.problems


def run_eval_suite(config: TaskConfig, model, tokenizer, splits: dict, events: EventWriter, phase: str) -> dict | None:
    if not config.eval_suite or not splits["eval_suite"]:
        return None
    from trainer.training.evaluate import answer_suite, score

    rows = splits["eval_suite"]
    whose = "the base model without the adapter" if phase == "baseline" else "the trained model"
    advance = phase_progress(events, phase, len(rows), f"{len(rows)} test requests, answered by {whose}")
    answered = answer_suite(model, tokenizer, rows, config.eval_suite.max_new_tokens, on_progress=advance)
    return score(rows, answered["replies"], config.eval_suite.json_field, calls=answered["calls"])


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
