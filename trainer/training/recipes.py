"""One function per recipe, each returning a ready transformers/TRL trainer.

    sft             TRL SFTTrainer: assistant-only loss on chat data, completion-only on prompt/response
    orpo / dpo      TRL ORPOTrainer (trl.experimental.orpo) / DPOTrainer on prompt/chosen/rejected
    classification  transformers Trainer on AutoModelForSequenceClassification, accuracy metric
LoRA (and QLoRA, the model being loaded quantized) comes in as a peft config; `lora: null` trains
every weight.
"""

import json
from pathlib import Path

from trainer.task.files import strip_where
from trainer.task.problems import Problem
from trainer.task.rules import deepspeed_file_problems
from trainer.task.schema import TaskConfig
from trainer.training.model import lora_spec

# training: keys that TrainingArguments takes under the same name, as they are.
SAME_NAMED = (
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "optim",
    "bf16",
    "fp16",
    "logging_steps",
    "eval_steps",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "seed",
)


def on_this_machine(config: TaskConfig) -> TaskConfig:
    """The config with the training values left unset (None) decided for the machine the run is on, as TRL decides
    them: with a GPU, bf16 (when the GPU has it and fp16 is off) and activation checkpointing, since GPU memory is
    what limits a run; on the CPU neither: host RAM is rarely the limit there, checkpointing recomputes the forward
    pass (~20% more compute, as transformers documents it), and bf16 would change every CPU run's numbers."""
    import torch

    t = config.training
    gpu = torch.cuda.is_available()
    if t.bf16 is None:
        t.bf16 = gpu and not t.fp16 and torch.cuda.is_bf16_supported()
    if t.gradient_checkpointing is None:
        t.gradient_checkpointing = gpu
    kernel_choices(config)
    return config


def kernel_choices(config: TaskConfig) -> list[str]:
    """Attention, Liger and padding-free decided for this machine (trainer/training/kernels.py), in place; the
    lines that say what was chosen and why (empty once decided)."""
    import torch

    from trainer.training.kernels import attention_choice, gpu_capability, liger_choice, padding_free_choice

    t, said = config.training, []
    gpu = torch.cuda.is_available()
    if t.attn_implementation == "auto":
        t.attn_implementation, why = attention_choice("auto", gpu, gpu_capability())
        said.append(f"attention: {t.attn_implementation} ({why})")
    if t.liger is None:
        t.liger, why = liger_choice(None, gpu)
        said.append(f"liger kernels: {'on' if t.liger else 'off'} ({why})")
    if t.padding_free is None:
        t.padding_free, why = padding_free_choice(None, t.attn_implementation, config.task, t.packing)
        said.append(f"padding-free batches: {'on' if t.padding_free else 'off'} ({why})")
    return said


def common_args(config: TaskConfig, output_dir: Path, has_eval: bool) -> dict:
    """TrainingArguments shared by every recipe."""
    import torch

    t = on_this_machine(config).training
    scheduler_kwargs = dict(t.lr_scheduler_kwargs)
    if t.lr_scheduler_type == "cosine_with_min_lr":
        if "min_lr" not in scheduler_kwargs:  # the two exclude each other
            scheduler_kwargs.setdefault("min_lr_rate", 0.1)
    if t.lr_scheduler_type == "warmup_stable_decay" and t.max_steps > 0:
        scheduler_kwargs.setdefault("num_decay_steps", max(1, t.max_steps // 10))
    load_best = (t.load_best_model_at_end or config.early_stopping is not None) and has_eval
    return dict(
        **{name: getattr(t, name) for name in SAME_NAMED},
        output_dir=str(output_dir),
        lr_scheduler_kwargs=scheduler_kwargs,
        logging_first_step=True,
        eval_strategy=t.eval_strategy if has_eval else "no",
        load_best_model_at_end=load_best,
        metric_for_best_model=t.metric_for_best_model if load_best else None,
        greater_is_better=None,
        report_to=["tensorboard"] if "tensorboard" in config.report else "none",  # the others: trackers.py
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,  # train.log is read by people and by `logs -f`; progress bars are noise there
        dataloader_num_workers=0,
        # Several GPUs run one process each (DDP). LoRA leaves no trainable parameter unused, and the
        # extra graph walk that looking for them costs is wasted; reentrant checkpointing breaks DDP.
        ddp_find_unused_parameters=False,
        use_liger_kernel=bool(t.liger),
        # transformers 5's name for it: the old `gradient_checkpointing` (which TRL's configs still default
        # to True) gives a FutureWarning unless this one is set.
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
    )


def decoder_layer_classes(model) -> list[str]:
    """The model's decoder layer class names, as transformers' models name them for splitting across devices
    (Qwen2ForCausalLM: Qwen2DecoderLayer): FSDP wraps, and so shards and gathers, one such layer at a time."""
    return [str(name) for name in (getattr(model, "_no_split_modules", None) or [])]


def distributed_args(config: TaskConfig, model, task_dir: Path | None) -> dict:
    """TrainingArguments for distributed.strategy, on top of common_args: none for ddp (one whole model per
    process, as torchrun starts them); transformers' own FSDP or DeepSpeed settings otherwise. The run has been
    refused already on a host without CUDA (host_problems), where transformers would quietly train plain DDP."""
    d = config.distributed
    if d.strategy == "deepspeed":
        return {"deepspeed": str(Path(task_dir or ".") / d.deepspeed)}
    if d.strategy != "fsdp":
        return {}
    checkpointing = bool(config.training.gradient_checkpointing)
    fsdp_config = {
        "version": 2,  # FSDP2 (fully_shard); transformers deprecates FSDP1
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": True,  # full shard: weights are gathered per layer and freed after its forward
        # one ordinary file per checkpoint and adapter, which resume, pull and `latest complete checkpoint` read
        "state_dict_type": "FULL_STATE_DICT",
        # FSDP's own checkpointing: the Trainer's would gather every layer a second time in the backward pass
        "activation_checkpointing": checkpointing,
    }
    layers = decoder_layer_classes(model)
    if layers:
        fsdp_config["transformer_layer_cls_to_wrap"] = layers
    return {
        "fsdp": True,
        "fsdp_config": fsdp_config,
        "activation_checkpointing": False,
        "activation_checkpointing_kwargs": None,
    }


def host_problems(config: TaskConfig, task_dir: Path) -> list[Problem]:
    """What only the host can know about distributed.strategy, checked before anything loads. Without CUDA,
    transformers and accelerate drop FSDP silently (use_cpu) and train plain DDP, every process holding the whole
    model: the run a user asked for would not be the run that trains."""
    import importlib.util
    import sys

    import torch

    from trainer.host.interpreter import missing_trackers

    problems = gpu_kernel_problems(config.training, torch.cuda.is_available())
    for name in missing_trackers(sys.executable, config.report):  # start checked it; a Slurm node may differ
        hint = f"gpurun setup --with {name} on this host, or pip install {name} into {sys.executable}"
        problems.append(Problem("report", f"{name} is not installed here; report: {name} needs it", hint))
    d = config.distributed
    if d.strategy == "ddp":
        return problems
    if d.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        hint = "pip install deepspeed into the host's Python, or use strategy: fsdp"
        problems.append(Problem("", "deepspeed is not installed on this host; strategy deepspeed needs it", hint))
    if not torch.cuda.is_available():
        message = f"strategy {d.strategy} needs CUDA GPUs and this host has none"
        if d.strategy == "fsdp":  # seen here: with use_cpu, transformers 5 / accelerate 1.15 drop the FSDP plugin
            message += ": transformers would quietly train plain DDP instead, every process holding the whole model"
        hint = "train on a host with NVIDIA GPUs, or remove distributed.strategy (ddp) to train on this one"
        problems.append(Problem("", message, hint))
    return problems + deepspeed_file_problems(config, task_dir)


def gpu_kernel_problems(t, cuda: bool) -> list[Problem]:
    """A GPU-only kernel the task asks for by name, on a host without CUDA: said before anything loads ("auto"
    falls back by itself)."""
    if cuda:
        return []
    hint = "train on a host with an NVIDIA GPU, or leave it unset (auto) to fall back here"
    problems = []
    if t.attn_implementation.startswith(("flash_attention", "kernels-community/flash")):
        message = f"attn_implementation {t.attn_implementation} needs CUDA and this host has none"
        problems.append(Problem("training.attn_implementation", message, hint))
    if t.liger:
        problems.append(Problem("training.liger", "Liger's kernels need CUDA and this host has none", hint))
    return problems


def build_trainer(
    config: TaskConfig,
    model,
    tokenizer,
    splits: dict,
    output_dir: Path,
    callbacks: list,
    tokenized=None,
    task_dir: Path | None = None,
):
    """`tokenized`: SFT's datasets as the token checks made them (trainer/training/tokencache.py); None tokenizes here.
    `task_dir`: where a DeepSpeed config named by the task is (distributed.deepspeed)."""
    import datasets
    from transformers import EarlyStoppingCallback, PrinterCallback

    datasets.disable_progress_bars()  # bars are noise in train.log; events.jsonl carries progress
    has_eval = bool(splits["eval"]) and config.training.eval_strategy != "no"
    if config.early_stopping is not None and has_eval:
        es = config.early_stopping
        callbacks = [*callbacks, EarlyStoppingCallback(es.patience, es.threshold)]
    args = common_args(config, output_dir, has_eval)
    args.update(distributed_args(config, model, task_dir))
    if config.task == "sft":
        trainer = sft(config, model, tokenizer, splits, args, has_eval, callbacks, tokenized)
    else:
        build = {"orpo": preference, "dpo": preference, "classification": classification}[config.task]
        trainer = build(config, model, tokenizer, splits, args, has_eval, callbacks)
    trainer.remove_callback(PrinterCallback)  # its raw dicts would repeat our own lines in train.log
    return trainer


def sft(config, model, tokenizer, splits, args, has_eval, callbacks, tokenized=None):
    from trl import SFTConfig, SFTTrainer

    from trainer.training.tokencache import tokenize_rows

    t = config.training
    if tokenized is None:  # called without the checks (a test, a notebook): tokenize here, the same way
        rows = splits["train"] + (splits["eval"] if has_eval else [])
        tokenized = tokenize_rows(config, tokenizer, rows, len(splits["train"]))
    # The rows come tokenized exactly as the token checks saw them (tools, tool calls and `weight: 0` included),
    # with their labels, and Arrow never sees the rows' nested tool schemas. Cut to max_length already, they need
    # nothing of TRL's preparation (tokenize, build labels, truncate: each a pass over every row), except packing.
    # TRL does not truncate padding-free batches without packing; the token checks have already
    # refused any example longer than max_length in that case.
    unpacked_padding_free = t.padding_free and not t.packing
    sft_args = SFTConfig(
        **args,
        max_length=None if unpacked_padding_free else t.max_length,
        packing=t.packing,
        padding_free=t.padding_free,
        assistant_only_loss=False,  # the mask is in the labels already
        dataset_kwargs={"skip_prepare_dataset": True} if tokenized.truncated else None,
    )
    return SFTTrainer(
        model=model,
        args=sft_args,
        train_dataset=tokenized.train,
        eval_dataset=tokenized.eval if has_eval else None,
        processing_class=tokenizer,
        peft_config=lora_spec(config),
        callbacks=callbacks,
    )


def _preference_rows(rows: list[dict]) -> list[dict]:
    """Explicit prompt, as data.normalise made it: strings train as plain text, messages through the chat template,
    as TRL does. Tools go as a JSON string, which TRL reads, so Arrow never merges different functions' schemas."""
    out = []
    for r in strip_where(rows):
        if "tools" in r:
            r["tools"] = json.dumps(r["tools"], ensure_ascii=False)
        out.append(r)
    return out


def preference(config, model, tokenizer, splits, args, has_eval, callbacks):
    from datasets import Dataset

    train = Dataset.from_list(_preference_rows(splits["train"]))
    evaluation = Dataset.from_list(_preference_rows(splits["eval"])) if has_eval else None
    p = config.preference
    if config.task == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer

        extra = {}
    else:
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer

        extra = {"loss_type": [p.loss_type]}
    return Trainer(
        model=model,
        args=Config(**args, beta=p.beta, max_length=config.training.max_length, **extra),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora_spec(config),
        callbacks=callbacks,
    )


def label_names(rows: list[dict]) -> list[str]:
    return sorted({str(r["label"]) for r in rows})


def classification(config, model, tokenizer, splits, args, has_eval, callbacks):
    import numpy as np
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    names = label_names(splits["train"])
    index = {name: i for i, name in enumerate(names)}

    def encode(rows):
        known = [r for r in rows if str(r["label"]) in index]
        encoded = tokenizer([r["text"] for r in known], truncation=True, max_length=config.training.max_length)
        return Dataset.from_dict({**encoded, "labels": [index[str(r["label"])] for r in known]})

    def accuracy(prediction):
        logits, labels = prediction
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    if config.lora is not None:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if getattr(model, "is_quantized", False):
            model = prepare_model_for_kbit_training(model)
        model = get_peft_model(model, lora_spec(config))
    return Trainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=encode(splits["train"]),
        eval_dataset=encode(splits["eval"]) if has_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
        callbacks=callbacks,
    )
