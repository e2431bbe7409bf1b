"""`python -m trainer export RUN_DIR TYPE`: the run's adapter merged into its base (unquantized: never onto 4-bit
weights) and written as one GGUF file for llama.cpp, output/gguf/<task>-<TYPE>.gguf, with the `gguf` package from PyPI
(pure Python; its Q8_0 is ggml's own), the tokenizer and the chat template inside. Then verified before it is called
done: transformers loads the file back (`gguf_file=`) and its next-token logits on a few prompts are held against the
merged model's (the same top-1 token; the largest difference printed). One JSON line: the file, its size, the check.

TYPE: f16, bf16, q8_0, q4_0. The k-quants (q4_k_m...) need llama.cpp's compiled quantizer: we never compile at run
time; the error names llama.cpp's own command to run on this file instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer.builtin.tiny import default_cache_dir
from trainer.rundir import OUTPUT_DIR, RUN_FILE
from trainer.task.loading import config_from_dict
from trainer.training.quiet import DEBUG_LOG, route_library_noise

TYPES = ("f16", "bf16", "q8_0", "q4_0")
ARCHITECTURES = {"qwen2": "QWEN2", "qwen3": "QWEN3", "llama": "LLAMA"}  # model_type -> gguf.MODEL_ARCH
PROMPTS = ("Hello", "How many vacation days do I have left?", "The capital of France is")


def main(argv: list[str]) -> int:
    run_dir, kind = Path(argv[0]).resolve(), argv[1]
    route_library_noise(run_dir / DEBUG_LOG)
    if kind not in TYPES:
        return say_error(
            f"GGUF type {kind} is not one gpurun writes ({', '.join(TYPES)})",
            "k-quants need llama.cpp's quantizer: export f16, then run llama.cpp's "
            f"`llama-quantize FILE-f16.gguf FILE-{kind}.gguf {kind.upper()}` where llama.cpp is built",
        )
    output = run_dir / OUTPUT_DIR
    if not (output / "adapter_config.json").is_file():
        return say_error(f"no adapter in {output}", "export a run that finished (gpurun status)")
    config = config_from_dict(json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))["config"])
    merged, tokenizer = merge_unquantized(config, output, run_dir.parent.parent / "cache" / "models")
    arch = ARCHITECTURES.get(merged.config.model_type)
    if arch is None:
        return say_error(
            f"GGUF export knows {', '.join(ARCHITECTURES)} models; this one is {merged.config.model_type}",
            "merge it (gpurun merge) and convert with llama.cpp's convert_hf_to_gguf.py",
        )
    target = output / "gguf" / f"{run_dir.name}-{kind}.gguf"
    target.parent.mkdir(exist_ok=True)
    partial = target.with_suffix(".gguf.partial")  # never a half-written file under the real name
    write_gguf(merged, tokenizer, arch, kind, partial)
    check = verify(merged, tokenizer, partial)
    if not check["top1_equal"] and kind != "q4_0":  # 4-bit may flip a close choice; 8 and 16 bits must not
        partial.unlink()
        return say_error(
            f"the GGUF file's next-token choices differ from the merged model's ({check['max_logit_diff']} at most)",
            "this is a gpurun bug: report it with the run's model and the type",
        )
    partial.replace(target)
    print(json.dumps({"gguf": str(target), "bytes": target.stat().st_size, "type": kind, **check}), flush=True)
    return 0


def say_error(message: str, hint: str) -> int:
    print(json.dumps({"error": message, "hint": hint}), flush=True)
    return 1


def merge_unquantized(config, adapter: Path, fallback_cache: Path):
    """The base in float32 on the CPU (bfloat16 on a GPU), whatever the run trained on (QLoRA's 4-bit
    included), the adapter folded in."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.training.model import resolve_base_model

    base = resolve_base_model(config, default_cache_dir(fallback=fallback_cache))
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.eval()
    return merged, AutoTokenizer.from_pretrained(str(adapter))


def write_gguf(model, tokenizer, arch_name: str, kind: str, path: Path) -> None:
    import gguf
    import numpy as np

    arch = getattr(gguf.MODEL_ARCH, arch_name)
    c = model.config
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(getattr(c, "_name_or_path", "") or "gpurun")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope_theta(c)))
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}
    file_type.update(q8_0=gguf.LlamaFileType.MOSTLY_Q8_0, q4_0=gguf.LlamaFileType.MOSTLY_Q4_0)
    writer.add_file_type(file_type[kind])
    add_tokenizer(writer, tokenizer, c.vocab_size)

    names = gguf.TensorNameMap(arch, c.num_hidden_layers)
    state = model.state_dict()
    if "lm_head.weight" in state and getattr(c, "tie_word_embeddings", False):
        del state["lm_head.weight"]  # tied: llama.cpp reads token_embd for the output too
    for hf_name, tensor in state.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        data = tensor.detach().float().cpu().numpy()
        if arch_name == "LLAMA" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = c.num_attention_heads if "q_proj" in hf_name else c.num_key_value_heads
            data = rope_permute(data, heads)  # llama.cpp's rotary layout; transformers undoes it on load
        array, raw_dtype = encoded(data, kind, gguf, np)
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def encoded(data, kind: str, gguf, np):
    """(array, raw_dtype) of one tensor: vectors (norms, biases) stay F32, as llama.cpp's converter keeps them."""
    if data.ndim == 1:
        return data.astype(np.float32), None
    if kind == "f16":
        return data.astype(np.float16), None
    qtype = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    qtype["q4_0"] = gguf.GGMLQuantizationType.Q4_0
    block = gguf.GGML_QUANT_SIZES[qtype[kind]][0]
    if data.shape[-1] % block:
        return data.astype(np.float16), None  # rows that do not split into blocks: f16, as llama.cpp falls back
    return gguf.quants.quantize(data, qtype[kind]), qtype[kind]


def rope_permute(weights, heads: int):
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return params.get("rope_theta") or getattr(config, "rope_theta", 10000.0)


def add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE (Qwen's, Llama 3's, builtin:tiny's) as llama.cpp's `gpt2` model: tokens, types, merges."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer model {model.get('type')}: GGUF export writes byte-level BPE tokenizers")
    by_id = {i: t for t, i in model["vocab"].items()}
    special = {t["id"]: t["content"] for t in spec.get("added_tokens", [])}
    by_id.update(special)
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token)
        if i not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif i in special:
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token, setter in (("eos_token", writer.add_eos_token_id), ("pad_token", writer.add_pad_token_id)):
        value = getattr(tokenizer, token, None)
        if value is not None:
            setter(tokenizer.convert_tokens_to_ids(value))
    if tokenizer.bos_token is not None:
        writer.add_bos_token_id(tokenizer.convert_tokens_to_ids(tokenizer.bos_token))
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def verify(merged, tokenizer, path: Path) -> dict:
    """The file read back by transformers, its next-token logits beside the merged model's on a few prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    loaded.eval()
    worst, same = 0.0, True
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            want = merged(input_ids=ids.to(merged.device)).logits[0, -1].float().cpu()
            got = loaded(input_ids=ids).logits[0, -1].float()
            worst = max(worst, float((want - got).abs().max()))
            same = same and int(want.argmax()) == int(got.argmax())
    return {"top1_equal": same, "max_logit_diff": round(worst, 4), "prompts": len(PROMPTS)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
