"""What the model will actually be trained on, token by token, checked before a GPU minute is spent.

For every example: its token length against max_length, and its loss mask (which tokens are
trained): the assistant turns for chat data, the response for prompt/response data, everything
for plain text. A row with no trained token, or a data set in which the end-of-turn token is
never trained (a model that never learns to stop), stops the run here with `file:line`. A row of
which max_length cuts off every trained token is dropped, said with its `file:line` (data.drop_long),
unless that would drop every training row.
"""

import re
from dataclasses import dataclass, field

from trainer.task.problems import Problem
from trainer.task.schema import TaskConfig

GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class TokenReport:
    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    problems: list[Problem] = field(default_factory=list)
    previews: list[list[tuple[str, bool]]] = field(default_factory=list)  # (text piece, trained?)
    eot_trained: bool | None = None  # None: not applicable (no masking for this task)
    eot_token: str | None = None
    lost_trained: int = 0  # examples of which max_length cuts off trained tokens
    eot_trained_untruncated: bool = False  # whether the end-of-turn token would be trained without max_length
    dropped: list[int] = field(default_factory=list)  # indices of the rows dropped: every trained token cut off
    dropped_where: list[str] = field(default_factory=list)  # their file:line
    dropped_lengths: list[int] = field(default_factory=list)  # their token lengths

    def percentiles(self) -> dict[str, int]:
        if not self.lengths:
            return {}
        ordered = sorted(self.lengths)

        def at(q: float) -> int:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}

    def suggested_max_length(self) -> int | None:
        """The max_length that keeps 99% of the examples whole."""
        return self.percentiles().get("p99")

    def summary(self, max_length: int) -> str:
        """`tokens per example: p50 …, max …; N truncated at max_length` (train.log); empty without examples."""
        lengths = self.percentiles()
        if not lengths:
            return ""
        shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
        dropped = f"; {len(self.dropped)} dropped" if self.dropped else ""
        return f"tokens per example: {shown}; {self.truncated} truncated at {max_length}{dropped}"

    def dropped_notice(self, max_length: int) -> str:
        """`N example(s) dropped: ... (file lines ...); max_length M keeps them`, or empty when none is."""
        if not self.dropped:
            return ""
        return (
            f"{len(self.dropped)} example(s) dropped: every trained token lies beyond max_length {max_length} "
            f"({_by_file(self.dropped_where)}); max_length {max(self.dropped_lengths)} keeps them whole "
            "(data.drop_long: false refuses them instead)"
        )


def _by_file(wheres: list[str], most: int = 10) -> str:
    """`data/a.jsonl lines 4, 9; data/b.jsonl line 2` from file:line places (the first `most` of them)."""
    files: dict[str, list[str]] = {}
    for where in wheres[:most]:
        name, _, line = where.rpartition(":")
        files.setdefault(name or where, []).append(line)
    shown = "; ".join(f"{name} line{'s' if len(lines) > 1 else ''} {', '.join(lines)}" for name, lines in files.items())
    return shown + (f"; and {len(wheres) - most} more" if len(wheres) > most else "")


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
    """(input ids, 1 where the token is trained) for one normalised row: what the SFT trainer trains on.

    Chat rows: the assistant turns (tool calls included) inside the template's generation markers, minus the
    turns with OpenAI's `weight: 0`. Conversational prompt/completion: the completion. Standard (string)
    prompt/completion and plain text, as TRL trains them: text + EOS, the completion (and EOS) alone trained.
    """
    tools = row.get("tools")
    if "messages" in row:
        out = tokenizer.apply_chat_template(
            row["messages"],
            tools=tools,
            chat_template=template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        return ids, _unweighted(row["messages"], mask)
    if "completion" in row and isinstance(row["completion"], str):
        eos = tokenizer.eos_token or ""
        prompt = list(tokenizer(row["prompt"])["input_ids"])
        full = list(tokenizer(row["prompt"] + row["completion"] + eos)["input_ids"])
        start = _common_prefix(prompt, full)  # as TRL: the completion starts where the two tokenizations part
        return full, [0] * start + [1] * (len(full) - start)
    if "completion" in row:
        prompt = tokenizer.apply_chat_template(
            row["prompt"],
            tools=tools,
            chat_template=template,
            tokenize=True,
            return_dict=True,
            add_generation_prompt=True,
        )["input_ids"]
        full = tokenizer.apply_chat_template(
            row["prompt"] + row["completion"], tools=tools, chat_template=template, tokenize=True, return_dict=True
        )["input_ids"]
        start = _common_prefix(list(prompt), list(full))
        return list(full), [0] * start + [1] * (len(full) - start)
    ids = list(tokenizer(row["text"])["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)  # TRL appends EOS to language-modelling rows
    return ids, [1] * len(ids)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _unweighted(messages: list[dict], mask: list[int]) -> list[int]:
    """The mask with the assistant turns marked `weight: 0` taken out.

    Each assistant turn is one run of trained tokens (the template puts untrained role tokens between two
    turns), so the k-th run is the k-th assistant turn.
    """
    weights = [m.get("weight", 1) for m in messages if m["role"] == "assistant"]
    if all(weights):
        return mask
    runs = [i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1])]
    if len(runs) != len(weights):
        raise ValueError(
            f"the chat template marks {len(runs)} trained spans for {len(weights)} assistant turns, "
            "so `weight: 0` cannot be applied turn by turn"
        )
    out = list(mask)
    for start, weight in zip(runs, weights, strict=True):
        end = start
        while end < len(out) and mask[end]:
            if not weight:
                out[end] = 0
            end += 1
    return out


def token_report(
    rows: list[dict], tokenizer, config: TaskConfig, show: int = 0, pairs=None, train_rows: int | None = None
) -> TokenReport:
    """The checks. `pairs` (a list, or trainer.training.tokencache.TokenColumns) gets each SFT row's (input ids, mask)
    appended, so that training reuses these tokens instead of tokenizing again; not those of the rows dropped
    (report.dropped: every trained token beyond max_length, with data.drop_long). The first `train_rows` rows (all
    of them when None) are the training rows: when every one of those would be dropped, each is a problem instead."""
    max_length = config.training.max_length
    if config.task in ("orpo", "dpo", "classification"):
        return _lengths_only(rows, tokenizer, max_length)  # these recipes mask on their own terms
    report = TokenReport()
    chat = any("messages" in row or isinstance(row.get("completion"), list) for row in rows)
    try:
        template = training_chat_template(tokenizer) if chat else None
    except ValueError as exc:
        report.problems.append(Problem("chat template", str(exc), "see README: task.yaml"))
        return report
    eot = _end_of_turn_id(tokenizer)
    report.eot_token = tokenizer.convert_ids_to_tokens(eot) if eot is not None else None
    report.eot_trained = False
    row_problems: list[tuple[int, Problem]] = []
    beyond: list[tuple[int, Problem, int]] = []  # the rows max_length leaves nothing to train: (index, problem, length)
    for index, row in enumerate(rows):
        try:
            ids, mask = mask_of(row, tokenizer, template)
        except ValueError as exc:
            problem = Problem(row.get("_where", "?"), str(exc), "drop `weight` or fix the template")
            row_problems.append((index, problem))
            continue
        report.lengths.append(len(ids))
        if len(ids) > max_length:
            report.truncated += 1
        kept_ids, kept_mask = ids[:max_length], mask[:max_length]
        if sum(kept_mask) < sum(mask):
            report.lost_trained += 1
        # (each `not report.…` first: once found, no other row's tokens need walking for it)
        if eot is not None and not report.eot_trained_untruncated and _trains(eot, ids, mask):
            report.eot_trained_untruncated = True
        if not any(mask):
            hint = "the assistant turn is empty or outside the template's generation markers"
            row_problems.append((index, Problem(row.get("_where", "?"), "no trained tokens", hint)))
        elif not any(kept_mask):
            reason = f"every trained token lies beyond max_length {max_length}"
            hint = f"raise training.max_length (to {len(ids)} it keeps this example whole), or shorten the prompt"
            beyond.append((index, Problem(row.get("_where", "?"), reason, hint), len(ids)))
            if config.data.drop_long:
                continue  # not handed to training, nor previewed (nothing in it is trained)
        if pairs is not None:
            pairs.append((ids, mask))
        if eot is not None and not report.eot_trained and _trains(eot, kept_ids, kept_mask):
            report.eot_trained = True
        if len(report.previews) < show:
            report.previews.append(_pieces(tokenizer, kept_ids, kept_mask))
    training = len(rows) if train_rows is None else train_rows
    if config.data.drop_long and beyond and sum(1 for index, _, _ in beyond if index < training) < training:
        report.dropped = [index for index, _, _ in beyond]
        report.dropped_where = [problem.where for _, problem, _ in beyond]
        report.dropped_lengths = [length for _, _, length in beyond]
        report.truncated -= len(beyond)  # (each longer than max_length, and each losing trained tokens)
        report.lost_trained -= len(beyond)
    else:  # refused: data.drop_long is false, or nothing would be left to train on (then `pairs` is not used)
        row_problems += [(index, problem) for index, problem, _ in beyond]
    report.problems += [problem for _, problem in sorted(row_problems, key=lambda item: item[0])]
    report.problems += _whole_set_problems(report, config, eot is not None)
    return report


def _lengths_only(rows: list[dict], tokenizer, max_length: int) -> TokenReport:
    """Preference and classification rows: their token lengths, and how many max_length truncates."""
    report = TokenReport()
    for row in rows:
        if isinstance(row.get("chosen"), list):  # conversational preference: through the chat template
            ids = tokenizer.apply_chat_template(
                row["prompt"] + row["chosen"], tools=row.get("tools"), tokenize=True, return_dict=True
            )["input_ids"]
        else:
            text = row.get("text") or f"{row.get('prompt', '')} {row.get('chosen', '')}"
            ids = tokenizer(text)["input_ids"]
        report.lengths.append(len(ids))
    report.truncated = sum(1 for n in report.lengths if n > max_length)
    return report


def _whole_set_problems(report: TokenReport, config: TaskConfig, has_eot: bool) -> list[Problem]:
    """What only the whole data set shows, once every row is walked: truncated padding-free batches, and an
    end-of-turn token that no row trains (because of the template, or because max_length cuts it off)."""
    problems = []
    t = config.training
    max_length = t.max_length
    if t.padding_free and not t.packing and report.truncated:
        problems.append(
            Problem(
                "training.padding_free",
                f"{report.truncated} example(s) exceed max_length {max_length}, and padding-free batches "
                "without packing are not truncated",
                "set training.packing: true, raise max_length, or shorten those examples",
            )
        )
    if has_eot and report.lengths and not report.eot_trained:
        never = f"the end-of-turn token {report.eot_token!r} is never trained: the model would not learn to stop"
        if report.eot_trained_untruncated:  # the template is fine: max_length cuts every answer's end off
            problems.append(
                Problem(
                    "training.max_length",
                    f"{never}, because max_length {max_length} cuts off the end of every answer",
                    f"raise training.max_length (to {report.suggested_max_length()} it keeps 99% of examples whole)",
                )
            )
        else:
            problems.append(
                Problem(
                    "chat template", never, "put it inside {% generation %}...{% endgeneration %} in the chat template"
                )
            )
    return problems


def _trains(token: int, ids: list[int], mask: list[int]) -> bool:
    return any(t == token and m for t, m in zip(ids, mask, strict=True))


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
