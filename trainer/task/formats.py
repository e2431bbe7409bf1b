"""Row formats: which shape a data row has (OpenAI / TRL messages, ShareGPT, Alpaca, TRL prompt/completion and
preference, prompt/response columns, text, classification), whether it is right, and its normal form, one per
family, that the trainer tokenizes."""

from trainer.task.chat import alpaca_messages, chat_messages, required_string, row_tools, sharegpt_messages
from trainer.task.problems import BadRow
from trainer.task.schema import TaskConfig

# The columns each row shape reads: any other column is named in a notice, never dropped silently.
USED_COLUMNS = {
    "messages": {"messages", "tools"},
    "sharegpt": {"conversations", "system", "tools"},
    "alpaca": {"instruction", "input", "output", "system", "history"},
    "prompt_completion": {"prompt", "completion", "tools"},
    "text": {"text"},
    "preference": {"prompt", "chosen", "rejected", "tools"},
    "sharegpt_preference": {"conversations", "chosen", "rejected", "system", "tools"},
    "classification": {"text", "label"},
}
PREFERENCE_FORMATS = ("preference", "sharegpt_preference")


def detect_format(row: dict, config: TaskConfig) -> str | None:
    """The row's shape, from its columns: TRL's, OpenAI's, ShareGPT / FastChat's, LLaMA-Factory's, Alpaca's."""
    keys = row.keys()
    if config.task == "classification":
        return "classification" if {"text", "label"} <= keys else None
    if {"chosen", "rejected"} <= keys:
        return "sharegpt_preference" if "conversations" in keys else "preference"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "unpaired_preference" if "label" in keys else "prompt_completion"
    if config.data.prompt_column in keys and config.data.response_column in keys:
        return "prompt_response"
    if "text" in keys:
        return "text"
    if "prompt" in keys:
        return "prompt_only"
    if "chosen" in keys or "rejected" in keys:
        return "preference"  # half a pair: the check names the missing half
    return None


def check_row(row: object, fmt: str, config: TaskConfig) -> str | None:
    """Return what is wrong with one row in the given format, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    try:
        normalise(row, fmt, config)
    except BadRow as exc:
        return str(exc)
    return None


def normalise(row: dict, fmt: str, config: TaskConfig, notes: set[str] | None = None) -> dict:
    """One shape per family; raises BadRow saying what is wrong with the row. `notes` gets what was read leniently,
    as peers read it (trainer.task.chat's ARGUMENTS_TWICE, NO_TOOLS).

    Chat rows (OpenAI / TRL messages, ShareGPT, Alpaca) -> {"messages", "tools"?}; prompt/completion ->
    {"prompt", "completion", "tools"?} (strings stay strings, as TRL trains them; gpurun's own prompt/response
    columns become chat turns); preference -> explicit {"prompt", "chosen", "rejected", "tools"?}.
    """
    _refuse_for_task(fmt, config.task)
    if fmt == "classification":
        required_string(row, "text")
        if row.get("label") is None or row.get("label") == "":
            raise BadRow("missing `label`")
        return {"text": row["text"], "label": row["label"]}
    if fmt == "text":
        return {"text": required_string(row, "text")}
    if fmt == "preference":
        return _preference(row, notes)
    if fmt == "sharegpt_preference":
        return _sharegpt_preference(row, notes)
    tools = row_tools(row)
    extra = {"tools": tools} if tools else {}
    if fmt == "prompt_completion":
        return {**_prompt_completion(row, tools, notes), **extra}
    if fmt == "prompt_response":
        return _prompt_response(row, config)
    return {"messages": _chat(row, fmt, tools, config, notes), **extra}


def _refuse_for_task(fmt: str, task: str) -> None:
    """Shapes gpurun does not train, and shapes the task does not train on."""
    if fmt == "unpaired_preference":
        raise BadRow(
            "unpaired preference rows (prompt, completion, label: KTO's shape) are not supported: "
            "gpurun trains DPO and ORPO on pairs (prompt, chosen, rejected)"
        )
    if fmt == "prompt_only":
        raise BadRow(
            "a prompt-only row has no answer to train on (TRL uses them for online methods such as GRPO, "
            "which gpurun does not run): add `completion`"
        )
    if task in ("orpo", "dpo") and fmt not in PREFERENCE_FORMATS:
        raise BadRow(f"task {task} trains on preference pairs (`chosen` and `rejected`); this row is {fmt} data")
    if fmt in PREFERENCE_FORMATS and task not in ("orpo", "dpo"):
        raise BadRow(f"a preference row (`chosen`, `rejected`) needs task: dpo or orpo, not {task}")


def _prompt_response(row: dict, config: TaskConfig) -> dict:
    """gpurun's own prompt/response columns (data.prompt_column, data.response_column) -> chat prompt/completion."""
    prompt = [{"role": "user", "content": required_string(row, config.data.prompt_column)}]
    answer = required_string(row, config.data.response_column)
    own_system = row.get("system") or config.data.system_prompt
    if own_system:
        if not isinstance(own_system, str):
            raise BadRow(f"`system` must be a string, got {type(own_system).__name__}")
        prompt.insert(0, {"role": "system", "content": own_system})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}


def _chat(row: dict, fmt: str, tools: list[dict] | None, config: TaskConfig, notes: set[str] | None) -> list[dict]:
    """The messages of a chat row, with data.system_prompt first when the row has no system turn of its own."""
    if fmt == "messages":
        messages = chat_messages(row.get("messages"), "messages", tools, notes=notes)
    elif fmt == "sharegpt":
        messages = sharegpt_messages(row, tools, notes=notes)
    elif fmt == "alpaca":
        messages = alpaca_messages(row)
    else:
        raise BadRow(f"unknown format {fmt!r}")
    system = config.data.system_prompt
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _prompt_completion(row: dict, tools: list[dict] | None, notes: set[str] | None) -> dict:
    """TRL's prompt-completion rows: standard (two strings) or conversational (two lists of messages)."""
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            raise BadRow("`completion` is empty")
        return {"prompt": prompt, "completion": completion}
    if not (isinstance(prompt, list) and isinstance(completion, list)):
        raise BadRow("`prompt` and `completion` must both be strings, or both be lists of messages")
    if not prompt or not completion:
        raise BadRow("`prompt` and `completion` must not be empty")
    messages = chat_messages(prompt + completion, "prompt+completion", tools, notes=notes)
    if messages[len(prompt)]["role"] != "assistant":
        raise BadRow("`completion` must start with an assistant turn")
    return {"prompt": messages[: len(prompt)], "completion": messages[len(prompt) :]}


def _preference(row: dict, notes: set[str] | None) -> dict:
    """TRL's four preference shapes -> explicit prompt; strings stay strings (TRL trains them as plain text)."""
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise BadRow(f"missing `{key}` (a preference row needs both `chosen` and `rejected`)")
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            prompt, chosen, rejected = _common_prefix_prompt(chosen, rejected)
        elif not isinstance(prompt, str):
            raise BadRow("`prompt` must be a string like `chosen` and `rejected`")
        if not prompt.strip():
            raise BadRow("`prompt` is empty" if "prompt" in row else "`chosen` and `rejected` share no prompt")
        for key, text in (("chosen", chosen), ("rejected", rejected)):
            if not text.strip():
                raise BadRow(f"`{key}` is empty")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise BadRow("`chosen` and `rejected` must both be strings, or both be lists of messages")
    tools = row_tools(row)
    if prompt is None:  # implicit prompt: the turns both conversations share
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if not isinstance(prompt, list) or not prompt:
        raise BadRow("`prompt` must be a non-empty list of messages like `chosen` and `rejected`")
    out = {"prompt": None, "chosen": None, "rejected": None}
    for key, answer in (("chosen", chosen), ("rejected", rejected)):
        messages = chat_messages(prompt + answer, f"prompt+{key}", tools, notes=notes)
        if not answer or messages[len(prompt)]["role"] != "assistant":
            raise BadRow(f"`{key}` must start with an assistant turn")
        out["prompt"], out[key] = messages[: len(prompt)], messages[len(prompt) :]
    return {**out, **({"tools": tools} if tools else {})}


def _common_prefix_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """TRL's extract_prompt for strings: the shared start is the prompt (a space before the split stays out)."""
    cut = 0
    while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
        cut += 1
    if cut and chosen[cut - 1] == " ":
        cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _sharegpt_preference(row: dict, notes: set[str] | None) -> dict:
    """LLaMA-Factory: `conversations` is the prompt; `chosen` and `rejected` are one answer turn each."""
    tools = row_tools(row)
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRow("`conversations` must be a non-empty list (the prompt)")
    out: dict = {}
    for key in ("chosen", "rejected"):
        answer = row[key]
        if not isinstance(answer, dict) or "value" not in answer:
            raise BadRow(f'`{key}` must be one turn, {{"from": "gpt", "value": ...}}')
        messages = sharegpt_messages(row, tools, turns + [{"from": answer.get("from", "gpt"), **answer}], notes)
        if messages[-1]["role"] != "assistant":
            raise BadRow(f"`{key}` must be an assistant turn (from: gpt)")
        out["prompt"], out[key] = messages[:-1], messages[-1:]
    return {**out, **({"tools": tools} if tools else {})}


FORMAT_HINT = (  # what a row of unknown shape is told
    "rows need messages, conversations, instruction/output, prompt/completion, prompt/response, "
    "chosen/rejected or text (see README: data formats)"
)


def used_columns(fmt: str, config: TaskConfig) -> set[str]:
    """The columns a row of this format is read from; any other is named in a notice."""
    # The eval suite's answer column rides along in the same files (seed 003's test rows): it is used.
    suite = {config.eval_suite.expected_field} if config.eval_suite and config.eval_suite.expected_field else set()
    if fmt == "prompt_response":
        return {config.data.prompt_column, config.data.response_column, "system"} | suite
    return USED_COLUMNS.get(fmt, set()) | suite


def row_shape(normal: dict) -> str:
    """What a normalised row trains as. SFT rows are all tokenized up front, so any of them mix; preference
    rows of strings (plain text) and of messages (chat template) do not."""
    if "chosen" in normal:
        return "preference strings" if isinstance(normal["chosen"], str) else "preference messages"
    return "classification" if "label" in normal else "sft"
