"""The task schema: the keys `task.yaml` may hold, their types, defaults and allowed values, each with what it
means underneath. Pure Python: the laptop and the host both import it."""

from dataclasses import dataclass, field
from typing import Any

TASK_KINDS = ("sft", "orpo", "dpo", "classification")
DATA_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_response", "text", "preference", "classification")
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
)
STRATEGIES = ("no", "steps", "epoch")
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp", "deepspeed")
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")  # `report:`; trainer/training/trackers.py
SEED_RANGE = (0, 2**32 - 1)  # numpy's seed, which transformers' set_seed also sets, takes no more

# What each scheduler accepts in lr_scheduler_kwargs: transformers' get_scheduler passes them on to the
# schedule function (its signature, minus what the Trainer fills in itself), or drops them silently for
# the constant ones. Kept here as data so the laptop checks without torch; a test holds this table
# against the installed transformers' and torch's signatures. Value: key -> the kind of value it takes.
SCHEDULER_KWARGS: dict[str, dict[str, str]] = {
    "linear": {},
    "cosine": {"num_cycles": "number"},
    "cosine_with_restarts": {"num_cycles": "number"},
    "polynomial": {"lr_end": "number", "power": "number"},
    "constant": {},
    "constant_with_warmup": {},
    "inverse_sqrt": {"timescale": "int"},
    "reduce_lr_on_plateau": {
        "mode": "min|max",
        "factor": "number",
        "patience": "int",
        "threshold": "number",
        "threshold_mode": "rel|abs",
        "cooldown": "int",
        "min_lr": "number",
        "eps": "number",
    },
    "cosine_with_min_lr": {"num_cycles": "number", "min_lr": "number", "min_lr_rate": "number"},
    # num_stable_steps is left out: the Trainer always passes num_training_steps, and the two exclude each other.
    "warmup_stable_decay": {
        "num_decay_steps": "int",
        "warmup_type": "linear|cosine|1-sqrt",
        "decay_type": "linear|cosine|1-sqrt",
        "min_lr_ratio": "number",
        "num_cycles": "number",
    },
}


def choice(*values: str, default: Any = None) -> Any:
    """A field that takes one of `values` (checked when the config is built, with a did-you-mean hint)."""
    return field(default=default, metadata={"choices": values})


@dataclass
class DataConfig:
    """`data:` where the rows are and what they look like."""

    train: list[str] = field(default_factory=list)
    """Training files (JSONL, JSON, CSV, Parquet), relative to the task dir, or `hub:owner/name[:split]`."""
    eval: list[str] = field(default_factory=list)
    """Evaluation files; empty means split `eval_split` off the training data."""
    test: list[str] = field(default_factory=list)
    """Held-out files for the sample generations and the eval suite."""
    format: str = choice(*DATA_FORMATS, default="auto")
    """Row format; `auto` detects it per file and rejects a mix."""
    encoding: str = "utf-8"
    """Text encoding of the data files: utf-8, or e.g. cp1252 / latin-1 for a CSV saved by a spreadsheet."""
    eval_split: float = 0.0
    """Fraction of the training rows held out for evaluation when `eval` is empty."""
    prompt_column: str = "prompt"
    """Column holding the prompt in prompt/response data."""
    response_column: str = "response"
    """Column holding the response in prompt/response data."""
    system_prompt: str = ""
    """System message prepended to every conversation that has none."""
    fraction: float = 1.0
    """Use only this fraction of the training rows (after shuffling)."""
    shuffle: bool = True
    """Shuffle the training rows before use."""
    seed: int = 42
    """Seed for shuffling and splitting."""
    drop_long: bool = True
    """Drop (with a notice naming their file:line) the SFT rows of which every trained token lies beyond
    training.max_length, which would train on nothing; false refuses them instead. Every row dropped is an error."""


@dataclass
class LoraConfig:
    """`lora:` the LoRA adapter (PEFT's LoraConfig)."""

    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (effective scale alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA branch."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt, or `all-linear`."""
    bias: str = choice("none", "all", "lora_only", default="none")
    """Which biases to train."""


@dataclass
class QuantizationConfig:
    """`quantization:` the base model loaded quantized by bitsandbytes."""

    load_in_4bit: bool = False
    """QLoRA: load the base model in 4 bit."""
    load_in_8bit: bool = False
    """Load the base model in 8 bit."""
    bnb_4bit_quant_type: str = choice("nf4", "fp4", default="nf4")
    """4-bit data type."""
    bnb_4bit_use_double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bit/param)."""
    bnb_4bit_compute_dtype: str = choice("bfloat16", "float16", "float32", default="bfloat16")
    """Dtype the 4-bit matmuls compute in."""


@dataclass
class TrainingConfig:
    """`training:` the trainer's arguments a task may set."""

    num_train_epochs: float = 3.0
    """Epochs; ignored when `max_steps` > 0."""
    max_steps: int = -1
    """Total optimizer steps; -1 means use epochs."""
    per_device_train_batch_size: int = 4
    """Rows per device per forward pass."""
    per_device_eval_batch_size: int = 4
    """Rows per device per eval pass."""
    gradient_accumulation_steps: int = 1
    """Forward passes per optimizer step."""
    learning_rate: float = 2e-4
    """Peak learning rate (2e-4 suits LoRA; full fine-tunes want ~2e-5)."""
    lr_scheduler_type: str = choice(*SCHEDULERS, default="cosine")
    """Learning-rate schedule."""
    warmup_steps: float = 0.0
    """Warmup: steps, or a fraction of the total when below 1."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    optim: str = choice(*OPTIMIZERS, default="adamw_torch_fused")
    """Optimizer; the default is transformers 5's: AdamW's fused kernel (on a GPU and on the CPU alike)."""
    gradient_checkpointing: bool | None = None
    """Trade compute for memory; unset: on with a GPU (TRL's default), off on the CPU (no memory to save)."""
    bf16: bool | None = None
    """Train in bfloat16; unset: on with a GPU that has it and fp16 off (TRL's default), off on the CPU."""
    fp16: bool = False
    """Train in float16."""
    max_length: int = 1024
    """Longest tokenized example; longer ones are truncated."""
    packing: bool = False
    """Pack several short examples into one sequence."""
    padding_free: bool | None = None
    """Batch without padding (flattened sequences with position ids); unset: on for SFT with FlashAttention."""
    attn_implementation: str = "auto"
    """Attention kernel: auto (FlashAttention where the host has it and a GPU it runs on, else sdpa), sdpa, eager,
    flash_attention_2, flash_attention_3, or a Hub kernel such as kernels-community/flash-attn2."""
    liger: bool | None = None
    """Liger's fused layer kernels; unset: on with CUDA when liger-kernel is installed."""
    lr_scheduler_kwargs: dict = field(default_factory=dict)
    """Extra scheduler arguments, e.g. {min_lr_rate: 0.1} for cosine_with_min_lr."""
    logging_steps: int = 10
    """Log loss and learning rate every N steps."""
    eval_strategy: str = choice(*STRATEGIES, default="steps")
    """When to evaluate."""
    eval_steps: int = 50
    """Evaluate every N steps (with eval_strategy: steps)."""
    save_strategy: str = choice(*STRATEGIES, default="steps")
    """When to save a checkpoint."""
    save_steps: int = 100
    """Checkpoint every N steps (with save_strategy: steps)."""
    save_total_limit: int = 3
    """Keep at most N checkpoints."""
    load_best_model_at_end: bool = False
    """Reload the best checkpoint (by `metric_for_best_model`) when training ends."""
    metric_for_best_model: str = "eval_loss"
    """Metric that picks the best checkpoint."""
    seed: int = 42
    """Seed for initialisation and data order."""


@dataclass
class PreferenceConfig:
    """`preference:` ORPO and DPO settings."""

    beta: float = 0.1
    """ORPO's odds-ratio weight / DPO's KL weight."""
    loss_type: str = choice("sigmoid", "ipo", "hinge", default="sigmoid")
    """DPO loss."""


@dataclass
class EarlyStoppingConfig:
    """`early_stopping:` stop when the eval metric stops improving."""

    patience: int = 3
    """Evaluations without improvement before training stops."""
    threshold: float = 0.0
    """Smallest change in the metric that counts as an improvement."""


@dataclass
class EvalSuiteConfig:
    """`eval_suite:` after training, generate on a test file and score the replies."""

    file: str = ""
    """Rows (chat `messages` ending with the assistant's answer) to generate on after training."""
    expected_field: str = ""
    """Column holding the expected answer. Unset: each row's answer is a tool call (the last assistant turn's
    first call), scored on the function's name and on its arguments."""
    json_field: str = ""
    """With expected_field: compare this field of the reply, parsed as a JSON object (an intent router answering
    {"intent": ...}: `json_field: intent`), instead of the whole reply."""
    max_new_tokens: int = 64
    """Generation budget per row."""
    limit: int = 200
    """Use at most this many rows."""


@dataclass
class DistributedConfig:
    """`distributed:` how several GPUs share a run."""

    strategy: str = choice(*DISTRIBUTED_STRATEGIES, default="ddp")
    """How several GPUs share a run: ddp (each holds the whole model), fsdp (each holds a shard of every decoder
    layer: PyTorch FSDP2 through transformers), deepspeed (ZeRO, as the `deepspeed` JSON says). fsdp and deepspeed
    need CUDA GPUs."""
    deepspeed: str = ""
    """With strategy deepspeed: the DeepSpeed config, a JSON file inside the task folder (e.g. ds_zero3.json)."""


@dataclass
class WandbConfig:
    """`wandb:` where a run goes in Weights & Biases, with `report: [..., wandb]`."""

    project: str = ""
    """The W&B project (default: the task's name)."""
    entity: str = ""
    """The team or user it goes under (default: your W&B default)."""
    name: str = ""
    """The run's name there (default: the experiment's name, else the run id)."""
    tags: list[str] = field(default_factory=list)
    """Tags for the run (the experiment's name is added)."""


@dataclass
class TaskConfig:
    """A whole `task.yaml`."""

    base_model: str = ""
    """Hub id, local path, or `builtin:tiny` (a tiny random model built on the spot)."""
    task: str = choice(*TASK_KINDS, default="sft")
    """What to train: sft, orpo, dpo or classification."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the rows are and what they look like."""
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    """LoRA adapter; `lora: null` means a full fine-tune."""
    quantization: QuantizationConfig | None = None
    """Load the base model quantized (QLoRA)."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Optimizer, schedule, batch sizes, logging, checkpoints."""
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    """ORPO / DPO settings."""
    early_stopping: EarlyStoppingConfig | None = None
    """Stop when the eval metric stops improving (needs eval data)."""
    eval_suite: EvalSuiteConfig | None = None
    """After training: generate on a test file and score the replies (tool calls: name and arguments)."""
    samples: int = 3
    """Sample generations on eval prompts written to output/samples.jsonl after training."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """How several GPUs share the model: ddp, or fsdp / deepspeed for a model that does not fit on one GPU."""
    report: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where the run's figures also go: tensorboard, wandb (offline without WANDB_API_KEY), trackio, mlflow (a SQLite
    store); each writes into the run's trackers/ folder, which `gpurun pull` brings home. events.jsonl always."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """W&B's project, entity, run name and tags (with `report: [wandb]`)."""
