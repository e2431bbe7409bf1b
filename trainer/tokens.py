"""What the model will actually be trained on, token by token, checked before a GPU minute is spent.

For every example: its token length against max_length, and its loss mask (which tokens are
trained): the assistant turns for chat data, the response for prompt/response data, everything
for plain text. A row with no trained token, or a data set in which the end-of-turn token is
never trained (a model that never learns to stop), stops the run here with `file:line`.
"""

import re
from dataclasses import dataclass, field

from trainer.config import Problem, TaskConfig

GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class TokenReport:
    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    problems: list[Problem] = field(default_factory=list)
    previews: list[list[tuple[str, bool]]] = field(default_factory=list)  # (text piece, trained?)
    eot_trained: bool | None = None  # None: not applicable (no masking for this task)
    eot_token: str | None = None

    def percentiles(self) -> dict[str, int]:
        if not self.lengths:
            return {}
        ordered = sorted(self.lengths)

        def at(q: float) -> int:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}


def training_chat_template(tokenizer) -> str | None:
    """The template whose {% generation %} markers give the assistant mask (None: the tokenizer's own).

    Raises ValueError, with what to do, when the tokenizer has neither markers nor a TRL training template.
    """
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template: use prompt/response or text data, or add a template")
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default", "")
    if GENERATION_MARKER.search(template):
        return None  # (TRL's own check, without importing TRL: a second off `gpurun train`)
    from trl.chat_template_utils import get_training_chat_template

    try:
        return get_training_chat_template(tokenizer)
    except Exception as exc:  # noqa: BLE001 - TRL raises ValueError/NotImplementedError by version
        raise ValueError(
            "the chat template has no {% generation %} markers and TRL has no training template for it "
            f"({exc}); add the markers around the assistant turn, end-of-turn token included"
        ) from None


def mask_of(row: dict, tokenizer, template: str | None) -> tuple[list[int], list[int]]:
    """(input ids, 1 where the token is trained) for one normalised row, as the SFT trainer builds it."""
    if "messages" in row:
        out = tokenizer.apply_chat_template(
            row["messages"],
            chat_template=template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        return list(out["input_ids"]), list(out["assistant_masks"])
    if "completion" in row:
        prompt = tokenizer.apply_chat_template(
            row["prompt"], chat_template=template, tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        full = tokenizer.apply_chat_template(
            row["prompt"] + row["completion"], chat_template=template, tokenize=True, return_dict=True
        )["input_ids"]
        return list(full), [0] * len(prompt) + [1] * (len(full) - len(prompt))
    ids = list(tokenizer(row["text"])["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)  # TRL appends EOS to language-modelling rows
    return ids, [1] * len(ids)


def token_report(rows: list[dict], tokenizer, config: TaskConfig, show: int = 0) -> TokenReport:
    report = TokenReport()
    max_length = config.training.max_length
    if config.task in ("orpo", "dpo", "classification"):
        for row in rows:  # lengths only: these recipes mask on their own terms
            text = row.get("text") or f"{row.get('prompt', '')} {row.get('chosen', '')}"
            report.lengths.append(len(tokenizer(text)["input_ids"]))
        report.truncated = sum(1 for n in report.lengths if n > max_length)
        return report
    chat = any("messages" in row or "completion" in row for row in rows)
    try:
        template = training_chat_template(tokenizer) if chat else None
    except ValueError as exc:
        report.problems.append(Problem("chat template", str(exc), "see README: task.yaml"))
        return report
    eot = _end_of_turn_id(tokenizer)
    report.eot_token = tokenizer.convert_ids_to_tokens(eot) if eot is not None else None
    report.eot_trained = False
    for row in rows:
        ids, mask = mask_of(row, tokenizer, template)
        report.lengths.append(len(ids))
        if len(ids) > max_length:
            report.truncated += 1
        kept_ids, kept_mask = ids[:max_length], mask[:max_length]
        if not any(kept_mask):
            beyond = f"every trained token lies beyond max_length {max_length}"
            reason = "no trained tokens" if not any(mask) else beyond
            hint = "the assistant turn is empty or outside the template's generation markers"
            report.problems.append(Problem(row.get("_where", "?"), reason, hint))
        if eot is not None and any(t == eot and m for t, m in zip(kept_ids, kept_mask, strict=True)):
            report.eot_trained = True
        if len(report.previews) < show:
            report.previews.append(_pieces(tokenizer, kept_ids, kept_mask))
    t = config.training
    if t.padding_free and not t.packing and report.truncated:
        report.problems.append(
            Problem(
                "training.padding_free",
                f"{report.truncated} example(s) exceed max_length {max_length}, and padding-free batches "
                "without packing are not truncated",
                "set training.packing: true, raise max_length, or shorten those examples",
            )
        )
    if eot is not None and rows and not report.eot_trained:
        report.problems.append(
            Problem(
                "chat template",
                f"the end-of-turn token {report.eot_token!r} is never trained: the model would not learn to stop",
                "put it inside {% generation %}...{% endgeneration %} in the chat template",
            )
        )
    return report


def _end_of_turn_id(tokenizer) -> int | None:
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            return token_id
    return tokenizer.eos_token_id


def _pieces(tokenizer, ids: list[int], mask: list[int]) -> list[tuple[str, bool]]:
    """Consecutive runs of trained / untrained tokens, decoded."""
    pieces: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or bool(mask[i]) != bool(mask[start]):
            pieces.append((tokenizer.decode(ids[start:i]), bool(mask[start])))
            start = i
    return pieces
