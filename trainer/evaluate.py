"""After training: sample generations on eval prompts, and the eval suite's function-call accuracy (seed 003)."""

import json
from pathlib import Path


def generate(model, tokenizer, messages: list[dict], max_new_tokens: int) -> str:
    """Greedy generation with the same chat template the model was trained with."""
    import torch

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def called_function(text: str) -> str | None:
    """The `name` of the JSON function call in a reply, if it holds one."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        call = json.loads(text[start : end + 1])
    except ValueError:
        return None
    return call.get("name") if isinstance(call, dict) else None


def suite_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int, on_progress=None) -> dict:
    """Share of rows whose reply calls the expected function. `on_progress(done)` after each row."""
    model.eval()
    correct = valid = 0
    for done, row in enumerate(rows, 1):
        name = called_function(generate(model, tokenizer, row["messages"], max_new_tokens))
        valid += name is not None
        correct += name == row["expected"]
        if on_progress is not None:
            on_progress(done)
    total = len(rows)
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total, "valid_json": valid}


def sample_rows(rows: list[dict], count: int) -> list[dict]:
    """The first `count` chat rows that end with an assistant turn: their prompt, and what was expected."""
    usable = [r for r in rows if len(r.get("messages") or []) >= 2 and r["messages"][-1]["role"] == "assistant"]
    return usable[:count]


def write_samples(
    model, tokenizer, rows: list[dict], count: int, path: Path, max_new_tokens: int = 64, on_progress=None
) -> int:
    """A few generations on eval prompts (chat rows), beside what was expected. `on_progress(done)` after each."""
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in sample_rows(rows, count):
            messages = row["messages"]
            prompt = messages[:-1]
            reply = generate(model, tokenizer, prompt, max_new_tokens)
            sample = {"prompt": prompt[-1]["content"], "expected": messages[-1]["content"], "generated": reply}
            fh.write(json.dumps(sample, ensure_ascii=False) + "\n")
            written += 1
            if on_progress is not None:
                on_progress(written)
    return written
