"""The measured side of tests/test_memory_estimate.py: the peak tensor memory of real steps of gpurun's SFT trainer
on the CPU, as PyTorch's profiler (profile_memory=True) records every allocation and free.

    python -m tests.memory_probe '{"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2, "intermediate": 768,
                                   "tokens": 512, "batch": 2, "lora": true, "checkpointing": false}'

prints the same JSON with `peak` (bytes) and `config` (the model's config.json) added. One process per
measurement: nothing of another run is counted.
The model is random-initialized (a Qwen2 of those sizes, builtin:tiny's tokenizer); every row is `tokens` long.
"""

import json
import sys
import tempfile
from pathlib import Path


def measured_peak(
    tmp: Path, hidden, layers, heads, kv_heads, intermediate, tokens, batch, lora, checkpointing
) -> tuple[int, dict]:
    """The peak in bytes, and the model's config.json."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.builtin.tiny import ensure_tiny
    from trainer.task.loading import config_from_dict
    from trainer.training.model import load_model, load_tokenizer
    from trainer.training.recipes import build_trainer

    tokenizer = load_tokenizer(str(ensure_tiny(tmp / "cache")))
    torch.manual_seed(0)
    shape = Qwen2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model_dir = tmp / "model"
    Qwen2ForCausalLM(shape).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    training = {"max_steps": 2, "per_device_train_batch_size": batch, "max_length": tokens, "logging_steps": 1}
    training.update(eval_strategy="no", save_strategy="no", gradient_checkpointing=checkpointing, warmup_steps=0)
    config = config_from_dict(
        {
            "base_model": str(model_dir),
            "data": {"train": ["train.jsonl"]},
            "lora": {"r": 16, "alpha": 32, "target_modules": ["all-linear"]} if lora else None,
            "samples": 0,
            "training": training,
        }
    )
    # Long replies cut at max_length: every row is exactly `tokens` long, and trains on nearly all of them.
    reply = "a b c d e f g h " * tokens
    rows = [{"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": reply}]}] * batch * 2
    model = load_model(config, str(model_dir))
    trainer = build_trainer(config, model, tokenizer, {"train": rows, "eval": [], "test": []}, tmp / "out", [])
    # Two steps: from the second on, AdamW's moments are held through the forward and backward, as in a real run.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        trainer.train()
    # Every tensor the steps touched, including those made before (the weights), sized by category over time.
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(at) for at in sizes), json.loads((model_dir / "config.json").read_text())


if __name__ == "__main__":
    case = json.loads(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        case["peak"], case["config"] = measured_peak(Path(tmp), **case)
    print(json.dumps(case))
