"""One training run, top to bottom: read the run -> check data -> load model -> train -> save.

Runs on the host as `python -m trainer run RUN_DIR`. RUN_DIR holds run.json (written by the
launcher: the resolved task config) and receives train.log, events.jsonl and output/.
The host layout is <workdir>/runs/<run-id>/ beside <workdir>/tasks/<task>/.
"""

import json
import os
import signal
import sys
from pathlib import Path

from trainer.checkpoints import latest_complete_checkpoint
from trainer.config import TaskConfig, TaskError, config_from_dict
from trainer.data import load_task_data
from trainer.events import EVENTS_FILE, EventWriter, events_callback, stop_callback
from trainer.model import load_model, load_tokenizer, lora_spec, resolve_base_model
from trainer.tiny import default_cache_dir

OUTPUT_DIR = "output"
EXIT_STOPPED = 128 + signal.SIGTERM
SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")


class StopRequest:
    """SIGTERM (from `gpurun stop`) asks for a checkpoint at the next step end, then a clean exit."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, _signum, _frame):
        self.requested = True


def run(run_dir: Path) -> int:
    run_dir = Path(run_dir).resolve()
    workdir = run_dir.parent.parent
    stop = StopRequest()
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    events = EventWriter(run_dir / EVENTS_FILE)
    # Names only, never values: proof that the secrets arrived, safe to log.
    secrets = sorted(name for name in os.environ if name in SECRET_NAMES or name in record.get("secret_env", []))
    events.emit("start", run_id=record["run_id"], task=record["task"], secrets=secrets)

    # 1. The task, checked again here: the host's files are what will actually be trained on.
    config = config_from_dict(record["config"])
    task_dir = workdir / "tasks" / record["task"]
    try:
        splits = load_task_data(task_dir, config)
    except TaskError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", flush=True)
        events.emit("error", message=f"{len(exc.problems)} data problem(s)", problems=[str(p) for p in exc.problems])
        return 1
    resume_from = None
    if record.get("resume_from"):
        parent_output = workdir / "runs" / record["resume_from"] / OUTPUT_DIR
        resume_from = latest_complete_checkpoint(parent_output)
        if resume_from is None:
            print(f"error: no complete checkpoint in {parent_output}", flush=True)
            events.emit("error", message=f"no complete checkpoint in run {record['resume_from']}")
            return 1
        print(f"resuming from {resume_from}", flush=True)
    print(
        f"data: {len(splits['train'])} train, {len(splits['eval'])} eval, {len(splits['test'])} test rows", flush=True
    )

    # 2. Model and tokenizer.
    base = resolve_base_model(config, cache_dir=default_cache_dir(fallback=workdir / "cache" / "models"))
    print(f"base model: {config.base_model} ({base})", flush=True)
    tokenizer = load_tokenizer(base)
    model = load_model(config, base)

    if stop.requested:
        events.emit("stopped", step=0)
        return EXIT_STOPPED

    # 3. Train.
    output_dir = run_dir / OUTPUT_DIR
    trainer = build_trainer(config, model, tokenizer, splits, output_dir, events)
    trainer.add_callback(stop_callback(lambda: stop.requested))
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stop.requested:
        checkpoint = latest_complete_checkpoint(output_dir)
        events.emit("stopped", step=trainer.state.global_step, checkpoint=checkpoint.name if checkpoint else None)
        print(f"stopped at step {trainer.state.global_step}; checkpoint: {checkpoint}", flush=True)
        sys.stdout.flush()
        return EXIT_STOPPED

    # 4. Save what `gpurun pull` brings home: adapter, tokenizer, state, resolved config.
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
    (output_dir / "task_config.json").write_text(json.dumps(record["config"], indent=2, ensure_ascii=False))
    final = {"train_loss": result.training_loss}
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if evals:
        final["eval_loss"] = evals[-1]["eval_loss"]
    events.emit("done", step=trainer.state.global_step, total_steps=trainer.state.max_steps, **final)
    print(f"saved adapter to {output_dir}", flush=True)
    return 0


def build_trainer(config: TaskConfig, model, tokenizer, splits, output_dir: Path, events: EventWriter):
    import datasets
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # bars are noise in train.log; events.jsonl carries progress
    t = config.training
    train_ds = Dataset.from_list(splits["train"])
    eval_ds = Dataset.from_list(splits["eval"]) if splits["eval"] else None
    chat = "messages" in train_ds.column_names
    has_eval = eval_ds is not None and t.eval_strategy != "no"
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=t.bf16,
        fp16=t.fp16,
        max_length=t.max_length,
        packing=t.packing,
        assistant_only_loss=chat,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=t.eval_strategy if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=t.load_best_model_at_end and has_eval,
        metric_for_best_model=t.metric_for_best_model,
        seed=t.seed,
        report_to=["tensorboard"],
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,  # train.log is read by people and by `logs -f`; progress bars are noise there
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds if has_eval else None,
        processing_class=tokenizer,
        peft_config=lora_spec(config),
        callbacks=[events_callback(events)],
    )
    trainer.remove_callback(PrinterCallback)  # its raw dicts would repeat our own lines in train.log
    return trainer
