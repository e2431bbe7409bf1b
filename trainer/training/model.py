"""The base model and tokenizer: hub id, local path or builtin; dtype, quantization, LoRA spec."""

import json
import os
from pathlib import Path

from trainer.builtin.tiny import LOCAL_TINY_DIR, ensure_tiny, is_builtin
from trainer.task.schema import TaskConfig


def resolve_base_model(config: TaskConfig, cache_dir: Path | None = None) -> str:
    """A hub id or a local folder that from_pretrained understands."""
    if is_builtin(config.base_model):
        return str(ensure_tiny(cache_dir))
    return config.base_model


def torch_dtype(config: TaskConfig):
    import torch

    if config.training.bf16:
        return torch.bfloat16
    if config.training.fp16:
        return torch.float16
    return torch.float32


def quantization_config(config: TaskConfig):
    q = config.quantization
    if not q or not (q.load_in_4bit or q.load_in_8bit):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if q.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    extra = {}
    if shards_weights(config):
        # FSDP (and ZeRO-3) shard only floating-point tensors of one dtype: the 4-bit weights are packed into the
        # compute dtype instead of uint8 (bitsandbytes' quant_storage), and the model loads in that dtype too.
        extra["bnb_4bit_quant_storage"] = getattr(torch, q.bnb_4bit_compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.bnb_4bit_compute_dtype),
        **extra,
    )


def shards_weights(config: TaskConfig) -> bool:
    """Whether the run's processes each hold a shard of the model (fsdp, deepspeed) rather than a whole copy."""
    return config.distributed.strategy in ("fsdp", "deepspeed")


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:  # many causal LMs ship without one; batching needs it
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(config: TaskConfig, name_or_path: str, num_labels: int | None = None):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = {"dtype": torch_dtype(config)}
    if config.training.attn_implementation != "auto":  # decided for this host (trainer/training/kernels.py)
        kwargs["attn_implementation"] = config.training.attn_implementation
    quant = quantization_config(config)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if getattr(quant, "bnb_4bit_quant_storage", None) not in (None, torch.uint8):
            kwargs["dtype"] = quant.bnb_4bit_quant_storage  # one dtype throughout, or FSDP cannot shard the layers
        # Each DDP process holds a whole (quantized) copy on its own GPU: LOCAL_RANK, set by the wrapper.
        device = int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.is_available() else "cpu"
        kwargs["device_map"] = {"": device}
    if config.task == "classification":
        return AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels, **kwargs)
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def adapter_base_name(config: TaskConfig) -> str:
    """What an adapter names as its base: the hub id or path the task gives; for builtin:tiny, the
    folder `python -m trainer.tiny` builds in the current directory, wherever the adapter is loaded."""
    if is_builtin(config.base_model):
        return LOCAL_TINY_DIR
    return config.base_model


def name_the_base(adapter_dir: Path, config: TaskConfig) -> None:
    """Make a saved adapter_config.json name the base as the user named it, not the folder the host
    loaded it from (for builtin:tiny a cache that exists only on the box).

    Done after PEFT saved, not by renaming the model before: PEFT's save looks the base up by that
    name (a hub request per checkpoint for a name that is not a folder on the box).
    """
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        adapter = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no adapter here (a full fine-tune)
    name = adapter_base_name(config)
    if adapter.get("base_model_name_or_path") == name:
        return
    adapter["base_model_name_or_path"] = name
    staging = path.with_name(f".{path.name}.tmp{os.getpid()}")
    staging.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(staging, path)  # a checkpoint is never seen with half a config


def lora_spec(config: TaskConfig):
    """peft.LoraConfig from the task's lora section (None for a full fine-tune)."""
    if config.lora is None:
        return None
    from peft import LoraConfig

    modules = config.lora.target_modules
    target = "all-linear" if modules == ["all-linear"] else modules
    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=target,
        bias=config.lora.bias,
        task_type="SEQ_CLS" if config.task == "classification" else "CAUSAL_LM",
    )
