"""After training: sample generations on eval prompts, and the eval suite's scores (seed 003).

The eval suite scores what a router must get right. For rows whose answer is a tool call (the last assistant
turn's first call), the reply is parsed with the chat template's tool-call syntax and scored twice: the function's
name, and name plus arguments (equal as parsed JSON). With `expected_field`, the reply (or, with `json_field`,
one field of the reply parsed as JSON) must equal the row's expected value.
"""

import json
import re
from pathlib import Path

from trainer.task.suite import as_call

# Qwen2.5 / Qwen3 / Hermes templates (and builtin:tiny's) emit each call as JSON inside <tool_call></tool_call>.
# An unclosed last block still counts: max_new_tokens may cut the closing tag off after a complete call.
TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def generate(model, tokenizer, messages: list[dict], max_new_tokens: int, tools: list[dict] | None = None) -> str:
    """Greedy generation with the same chat template (and tools) the model was trained with."""
    _, new_ids = generate_ids(model, tokenizer, messages, max_new_tokens, tools)
    # Qwen's <tool_call> tags are added tokens but not special ones, so skipping special tokens keeps them.
    return tokenizer.decode(new_ids, skip_special_tokens=True)


def generate_ids(model, tokenizer, messages: list[dict], max_new_tokens: int, tools: list[dict] | None = None):
    """(prompt token ids, generated token ids) of one greedy reply."""
    import torch

    inputs = tokenizer.apply_chat_template(
        messages, tools=tools or None, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    prompt = inputs["input_ids"][0]
    return prompt.tolist(), out[0][prompt.shape[0] :].tolist()


def template_calls(tokenizer, new_ids: list[int], prompt_ids: list[int], tools: list[dict] | None) -> list[dict]:
    """The calls as the tokenizer's own response template reads them (transformers' `parse_response`), when it
    has one: a model whose template writes calls some other way than <tool_call> JSON is still read right.
    Empty when it has none (builtin:tiny and most hub models today) or cannot read this reply."""
    if getattr(tokenizer, "response_template", None) is None:
        return []
    try:
        message = tokenizer.parse_response(new_ids, prefix=prompt_ids, tools=tools or None)
    except Exception:  # noqa: BLE001 - a reply the template's parser chokes on is the text parser's to read
        return []
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    found = [as_call(c.get("function", c)) for c in calls or [] if isinstance(c, dict)]
    return [call for call in found if call]


def json_objects(text: str) -> list[dict]:
    """Every top-level JSON object in a piece of text, in order (prose around them is skipped)."""
    decoder = json.JSONDecoder()
    found, at = [], text.find("{")
    while at >= 0:
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            at = text.find("{", at + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        at = text.find("{", end)
    return found


def parse_tool_calls(text: str) -> list[dict]:
    """The calls in a reply: <tool_call> blocks holding JSON, else the first bare JSON object with a "name"."""
    blocks = TOOL_CALL_BLOCK.findall(text)
    if blocks:
        calls = [as_call(objects[0]) for objects in map(json_objects, blocks) if objects]
        return [call for call in calls if call]
    for value in json_objects(text):
        call = as_call(value)
        if call:
            return [call]
    return []


def reply_field(reply: str, field: str):
    """`field` of the first JSON object in the reply that has it; None when there is none."""
    for value in json_objects(reply):
        if field in value:
            return value[field]
    return None


def score(rows: list[dict], replies: list[str], json_field: str = "", calls: list[list[dict]] | None = None) -> dict:
    """The suite's figures for replies to rows (each with "call" or "expected"). Pure: no model needed.

    Tool-call rows: name_accuracy (the called function's name is right), arguments_accuracy (name right and
    arguments equal as parsed JSON, key order ignored), parsed (replies that held a call). Rows with an expected
    answer: accuracy (the reply, stripped, or its `json_field`, equals it), parsed (replies that were JSON
    objects). `accuracy` is the headline figure either way: the share routed to the right function for calls.
    `calls`: the calls each reply held, when already read (by a response template); else read from the text.
    """
    total = len(rows)
    share = (lambda n: n / total) if total else (lambda n: 0.0)
    if rows and "call" in rows[0]:
        names = arguments = parsed = 0
        read = calls if calls is not None else [parse_tool_calls(reply) for reply in replies]
        for row, held in zip(rows, read, strict=True):
            parsed += bool(held)
            if held and held[0]["name"] == row["call"]["name"]:
                names += 1
                arguments += held[0]["arguments"] == row["call"]["arguments"]
        return {
            "mode": "tool_call",
            "accuracy": share(names),
            "name_accuracy": share(names),
            "arguments_accuracy": share(arguments),
            "correct": names,
            "parsed": parsed,
            "total": total,
        }
    correct = parsed = 0
    for row, reply in zip(rows, replies, strict=True):
        objects = json_objects(reply)
        parsed += bool(objects)
        if json_field:
            got = reply_field(reply, json_field)
            correct += got is not None and _same(got, row["expected"])
        else:
            correct += reply.strip() == str(row["expected"]).strip()
    mode = "json_field" if json_field else "answer"
    return {"mode": mode, "accuracy": share(correct), "correct": correct, "parsed": parsed, "total": total}


def _same(got, expected) -> bool:
    """A JSON field against a column value: equal as values, or as text when the column holds a string."""
    return got == expected or (
        isinstance(expected, str) and isinstance(got, (str, int, float)) and str(got) == expected
    )


def score_warning(result: dict, json_field: str = "") -> str | None:
    """What to tell the user when the figures mean the replies were not read as intended."""
    total, parsed = result["total"], result["parsed"]
    if not total:
        return None
    if result["mode"] == "tool_call" and parsed == 0:
        return (
            f"eval suite: none of the {total} replies held a tool call (<tool_call> block or JSON with a name); "
            "hint: read output/samples.jsonl, train longer, or raise eval_suite.max_new_tokens"
        )
    if result["mode"] == "json_field" and parsed == 0:
        return (
            f"eval suite: none of the {total} replies was a JSON object, so `{json_field}` was never found; "
            "hint: read output/samples.jsonl, train longer, or raise eval_suite.max_new_tokens"
        )
    if result["mode"] == "answer" and result["correct"] == 0 and parsed:
        return (
            f"eval suite: none of the {total} replies equalled its expected answer, and {parsed} were JSON objects; "
            "hint: to compare one field of them, set eval_suite.json_field (e.g. json_field: name)"
        )
    return None


def answer_suite(model, tokenizer, rows: list[dict], max_new_tokens: int, on_progress=None) -> dict:
    """The model's reply to each suite row ("replies"), and the calls each held ("calls"), read by the
    tokenizer's response template if it has one, else from the text. `on_progress(done)` after each row."""
    model.eval()
    replies, calls = [], []
    for done, row in enumerate(rows, 1):
        prompt_ids, new_ids = generate_ids(model, tokenizer, row["messages"], max_new_tokens, row.get("tools"))
        reply = tokenizer.decode(new_ids, skip_special_tokens=True)
        replies.append(reply)
        calls.append(template_calls(tokenizer, new_ids, prompt_ids, row.get("tools")) or parse_tool_calls(reply))
        if on_progress is not None:
            on_progress(done)
    return {"replies": replies, "calls": calls}


def sample_rows(rows: list[dict], count: int) -> list[dict]:
    """The first `count` chat rows that end with an assistant turn: their prompt, and what was expected."""
    usable = [r for r in rows if len(r.get("messages") or []) >= 2 and r["messages"][-1]["role"] == "assistant"]
    return usable[:count]


def write_samples(
    model, tokenizer, rows: list[dict], count: int, path: Path, max_new_tokens: int = 128, on_progress=None
) -> int:
    """A few generations on eval prompts (chat rows), beside what was expected. `on_progress(done)` after each."""
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in sample_rows(rows, count):
            messages = row["messages"]
            prompt = messages[:-1]
            reply = generate(model, tokenizer, prompt, max_new_tokens, row.get("tools"))
            answer = messages[-1]
            expected = answer["content"] or [c.get("function", c) for c in answer.get("tool_calls") or []]
            sample = {"prompt": prompt[-1]["content"], "expected": expected, "generated": reply}
            fh.write(json.dumps(sample, ensure_ascii=False) + "\n")
            written += 1
            if on_progress is not None:
                on_progress(written)
    return written


def score_text(result: dict) -> str:
    """`name 0.825 · args 0.600 · 38/40 parsed` for tool calls, `accuracy 0.825` otherwise (train.log)."""
    if result.get("mode") == "tool_call":
        return (
            f"name {result['name_accuracy']:.3f} · args {result['arguments_accuracy']:.3f}"
            f" · {result['parsed']}/{result['total']} replies held a call"
        )
    return f"accuracy {result['accuracy']:.3f} ({result['correct']}/{result['total']})"
