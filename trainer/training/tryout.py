"""The trained model tried out, after a run's last step: sample replies to eval prompts (samples.jsonl), and the
eval suite, scored beside the base model's own figures (the adapter switched off) in one `eval_suite` event.

The generating and scoring are trainer/training/evaluate.py's; this is the run's step around them, saying in
train.log and in phase events how far it has got.
"""

from pathlib import Path

from trainer.events import EventWriter
from trainer.task.schema import TaskConfig
from trainer.training.callbacks import phase_progress


def write_sample_replies(
    config: TaskConfig, model, tokenizer, splits: dict, output_dir: Path, events: EventWriter
) -> None:
    """A few generations on eval prompts (test or train ones when there are none), into output/samples.jsonl."""
    from trainer.training.evaluate import sample_rows, write_samples

    prompts = splits["eval"] or splits["test"] or splits["train"]
    count = len(sample_rows(prompts, config.samples))
    advance = phase_progress(events, "samples", count, f"generating {count} sample replies to eval prompts")
    written = write_samples(
        model, tokenizer, prompts, config.samples, output_dir / "samples.jsonl", on_progress=advance
    )
    print(f"wrote {written} sample generations to {output_dir / 'samples.jsonl'}", flush=True)


def eval_suite_beside_base(config: TaskConfig, model, tokenizer, splits: dict, events: EventWriter, step: int) -> dict:
    """The eval suite's figures for the trained model and for the base model, in one `eval_suite` event and one
    line of train.log. Returns the trained model's accuracies, for the run's `done` event (none without a suite)."""
    suite = run_eval_suite(config, model, tokenizer, splits, events, "eval_suite")
    if suite is None:
        return {}
    from trainer.training.evaluate import score_text, score_warning

    base = None
    if hasattr(model, "disable_adapter"):  # the base model is the adapter switched off
        # (measured after training: generating before it slowed the CPU training loop 15x here)
        with model.disable_adapter():
            base = run_eval_suite(config, model, tokenizer, splits, events, "baseline")
    warning = score_warning(suite, config.eval_suite.json_field)
    extra = {"warning": warning} if warning else {}
    events.emit("eval_suite", step=step, **baseline_figures(base), **suite, **extra)
    before = f" (base model without the adapter: {score_text(base)})" if base else ""
    print(f"eval suite: {score_text(suite)}{before}", flush=True)
    if warning:
        print(f"warning: {warning}", flush=True)
    return {k: v for k, v in suite.items() if k.endswith("accuracy")}


def baseline_figures(base: dict | None) -> dict:
    """The base model's figures to show beside the trained one's: baseline_accuracy (None when the base model
    could not be measured), baseline_arguments_accuracy, baseline_parsed, ..."""
    baseline = {"baseline_accuracy": None}
    baseline.update({f"baseline_{k}": v for k, v in (base or {}).items() if k.endswith(("accuracy", "parsed"))})
    return baseline


def run_eval_suite(config: TaskConfig, model, tokenizer, splits: dict, events: EventWriter, phase: str) -> dict | None:
    """The suite's figures for `model` as it is now (phase eval_suite or baseline); None when the task has none."""
    if not config.eval_suite or not splits["eval_suite"]:
        return None
    from trainer.training.evaluate import answer_suite, score

    rows = splits["eval_suite"]
    whose = "the base model without the adapter" if phase == "baseline" else "the trained model"
    advance = phase_progress(events, phase, len(rows), f"{len(rows)} test requests, answered by {whose}")
    answered = answer_suite(model, tokenizer, rows, config.eval_suite.max_new_tokens, on_progress=advance)
    return score(rows, answered["replies"], config.eval_suite.json_field, calls=answered["calls"])
