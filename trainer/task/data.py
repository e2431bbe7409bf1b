"""Rows from JSONL / JSON / CSV / Parquet, each checked, then normalised to one shape per task.

Reading and checking are pure Python (plus pyarrow for Parquet, imported only then), so the
launcher runs the same checks on the laptop as the trainer runs on the host. Every bad row is
reported as `file:line: problem`, all of them at once.
"""

import csv
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

from trainer.task.config import Problem, TaskConfig, TaskError, decode_text

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT speakers: FastChat's human/gpt, and LLaMA-Factory's function_call / observation for tool use.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
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
MAX_LISTED = 20
SPLITS = ("train", "eval", "test")
WHERE = "_where"  # each normalised row remembers its file:line, for errors found later (token checks)


class BadRow(ValueError):
    """What is wrong with one row, as the user reads it after `file:line: `."""


def strip_where(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != WHERE} for row in rows]


def read_rows(path: Path, problems: list[Problem], encoding: str = "utf-8") -> Iterator[tuple[int, object]]:
    """Yield (line number, row) from a data file; a row that does not parse becomes a Problem.

    Whatever the file holds, the answer is a Problem at `file:line`, never an exception: bytes that are not
    `encoding`, broken JSON, CSV rows of the wrong width, a broken Parquet file, nesting too deep to walk,
    strings that are not valid Unicode (a lone surrogate from a broken `\\u` escape).
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        problems.append(Problem(str(path), f"unknown file type {suffix!r}", f"use one of {', '.join(SUFFIXES)}"))
        return
    if suffix == ".parquet":
        yield from _parquet_rows(path, problems)
        return
    try:
        text = decode_text(path.read_bytes(), path, encoding)
    except TaskError as exc:
        problems.extend(exc.problems)
        return
    if suffix == ".jsonl":
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
            if not line.strip():
                continue
            row = _json_row(line, f"{path}:{number}", problems)
            if row is not _UNREADABLE:
                yield number, row
    elif suffix == ".json":
        data = _json_row(text, str(path), problems)
        if data is _UNREADABLE:
            return
        if not isinstance(data, list):
            problems.append(Problem(f"{path}:1", "a .json data file must hold a list of rows", "or use .jsonl"))
            return
        yield from ((i, row) for i, row in enumerate(data, 1))  # JSON arrays: "line" is the row number
    else:
        yield from _csv_rows(path, text, problems)


_UNREADABLE = object()
MAX_DEPTH = 32  # rows are a few levels deep (messages -> turn -> tool call -> arguments); deeper is a broken file
CSV_FIELD_LIMIT = 1 << 30  # a long example is data (the token checks say how much is truncated), not a CSV error
JSON_HINTS = {
    "Unterminated string": 'close the string with " on the same line (a line break inside a string is written \\n)',
    "Invalid control character": "a tab or line break inside a string must be written \\t or \\n",
    "Expecting property name enclosed in double quotes": 'keys need "double quotes", and no comma before }',
    "Expecting value": 'a value is missing here (JSON values: "text", numbers, true, false, null, [..], {..})',
    "Expecting ',' delimiter": "a comma is missing between two items, or a bracket is not closed",
    "Expecting ':' delimiter": 'a key needs a colon: {"role": "user"}',
    "Extra data": "one JSON object per line: this line holds more than one (or text after it)",
    "Unexpected UTF-8 BOM": "save the file as UTF-8 without a byte-order mark",
}


def _json_row(text: str, where: str, problems: list[Problem]) -> object:
    """One parsed JSON value, or _UNREADABLE with a Problem that says what is broken and where."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        line = f":{exc.lineno}" if ":" not in where.rpartition("/")[2] else ""
        hint = next((h for m, h in JSON_HINTS.items() if exc.msg.startswith(m)), "each line is one JSON object")
        problems.append(Problem(f"{where}{line}", f"not valid JSON: {exc.msg} (column {exc.colno})", hint))
        return _UNREADABLE
    except RecursionError:
        problems.append(Problem(where, "not valid JSON: nested too deeply to read", "rows are a few levels deep"))
        return _UNREADABLE
    problem = _bad_text(value)
    if problem:
        problems.append(Problem(where, problem[0], problem[1]))
        return _UNREADABLE
    return value


def _bad_text(value: object, depth: int = 0) -> tuple[str, str] | None:
    """(problem, hint) for nesting deeper than MAX_DEPTH or a string that is not valid Unicode, else None."""
    if depth > MAX_DEPTH:
        return f"nested more than {MAX_DEPTH} levels deep", "rows are a few levels deep: is this the right file?"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            shown = value[max(0, exc.start - 20) : exc.start].encode("utf-8", "replace").decode()
            return (
                f"a lone surrogate \\u{ord(bad):04x} after {shown!r}: not valid Unicode",
                "a \\ud800-\\udfff escape must be one half of a pair: write the character itself instead",
            )
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _bad_text(key, depth + 1) if isinstance(key, str) else None
        found = found or _bad_text(item, depth + 1)
        if found:
            return found
    return None


def _csv_rows(path: Path, text: str, problems: list[Problem]) -> Iterator[tuple[int, object]]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                more = "more" if len(row) > len(header) else "fewer"
                problems.append(
                    Problem(
                        f"{path}:{reader.line_num}",
                        f"{len(row)} fields, {more} than the header's {len(header)}",
                        'quote a field that holds a comma: "like, this"',
                    )
                )
                continue
            found = _bad_text(row)
            if found:
                problems.append(Problem(f"{path}:{reader.line_num}", *found))
                continue
            yield reader.line_num, dict(zip(header, row, strict=True))
    except csv.Error as exc:
        problems.append(Problem(f"{path}:{reader.line_num}", f"not valid CSV: {exc}", "check the quoting on that line"))


def _parquet_rows(path: Path, problems: list[Problem]) -> Iterator[tuple[int, object]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # a laptop with the light install: the host checks these rows
        return
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types (ArrowInvalid, OSError, ...) for one cause
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = reason.replace(f"Could not open Parquet input source '{path}': ", "").replace(str(path), path.name)
        hint = "write it again (e.g. pandas.DataFrame.to_parquet), or use .jsonl"
        problems.append(Problem(str(path), f"not a readable Parquet file: {reason}", hint))
        return
    for i, row in enumerate(rows, 1):
        found = _bad_text(row)
        if found:
            problems.append(Problem(f"{path}:{i}", *found))
            continue
        yield i, row


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
        _normalised(row, fmt, config)
    except BadRow as exc:
        return str(exc)
    return None


def normalise(row: dict, fmt: str, config: TaskConfig) -> dict:
    """One shape per family, for a row that passed check_row.

    Chat rows (OpenAI / TRL messages, ShareGPT, Alpaca) -> {"messages", "tools"?}; prompt/completion ->
    {"prompt", "completion", "tools"?} (strings stay strings, as TRL trains them; gpurun's own prompt/response
    columns become chat turns); preference -> explicit {"prompt", "chosen", "rejected", "tools"?}.
    """
    return _normalised(row, fmt, config)


def _normalised(row: dict, fmt: str, config: TaskConfig) -> dict:
    task = config.task
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
    if fmt == "classification":
        _string(row, "text")
        if row.get("label") is None or row.get("label") == "":
            raise BadRow("missing `label`")
        return {"text": row["text"], "label": row["label"]}
    if fmt == "text":
        return {"text": _string(row, "text")}
    if fmt == "preference":
        return _preference(row)
    if fmt == "sharegpt_preference":
        return _sharegpt_preference(row)
    tools = _tools(row)
    extra = {"tools": tools} if tools else {}
    if fmt == "prompt_completion":
        return {**_prompt_completion(row, tools), **extra}
    if fmt == "prompt_response":
        prompt = [{"role": "user", "content": _string(row, config.data.prompt_column)}]
        answer = _string(row, config.data.response_column)
        own_system = row.get("system") or config.data.system_prompt
        if own_system:
            if not isinstance(own_system, str):
                raise BadRow(f"`system` must be a string, got {type(own_system).__name__}")
            prompt.insert(0, {"role": "system", "content": own_system})
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}
    if fmt == "messages":
        messages = _messages(row.get("messages"), "messages", tools)
    elif fmt == "sharegpt":
        messages = _sharegpt_messages(row, tools)
    elif fmt == "alpaca":
        messages = _alpaca_messages(row)
    else:
        raise BadRow(f"unknown format {fmt!r}")
    system = config.data.system_prompt
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages, **extra}


def _string(row: dict, key: str, allow_empty: bool = False) -> str:
    if key not in row or row[key] is None:
        raise BadRow(f"missing `{key}`")
    if not isinstance(row[key], str):
        raise BadRow(f"`{key}` must be a string, got {type(row[key]).__name__}")
    if not allow_empty and not row[key].strip():
        raise BadRow(f"`{key}` is empty")
    return row[key]


def _tools(row: dict) -> list[dict] | None:
    """The row's functions as chat templates take them ({"type": "function", "function": {...}}), or None.

    OpenAI, TRL and axolotl give a list; LLaMA-Factory a JSON string of bare function objects.
    """
    tools = row.get("tools")
    if tools is None or tools in ("", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise BadRow(f"`tools` is not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(tools, list):
        raise BadRow(f"`tools` must be a list of functions, got {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise BadRow(f"tools[{i}] must be a function with a `name` (and a JSON-schema `parameters`)")
        if not isinstance(function.get("parameters", {}), dict):
            raise BadRow(f"tools[{i}]: `parameters` must be a JSON schema object")
        out.append({"type": "function", "function": function})
    return out


def _tool_call(call: object, where: str, names: set[str] | None) -> dict:
    """One call as chat templates take it: arguments parsed to an object (OpenAI sends a JSON string)."""
    # OpenAI nests the call under "function"; LLaMA-Factory's function_call value and some TRL rows do not.
    function = call.get("function", call) if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise BadRow(f"{where}: a tool call needs a function `name`")
    if names is None:
        raise BadRow(f"{where}: calls {name!r} but the row has no `tools` list naming the functions")
    if name not in names:
        raise BadRow(f"{where}: calls {name!r}, which is not in `tools` ({', '.join(sorted(names))})")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise BadRow(
                f"{where}: the arguments of {name!r} are not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
    if not isinstance(arguments, dict):
        raise BadRow(f"{where}: the arguments of {name!r} must be a JSON object, got {type(arguments).__name__}")
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def _messages(raw: object, name: str, tools: list[dict] | None, offset: int = 0) -> list[dict]:
    """Checked chat messages, normalised: tool calls parsed, `weight: 0` kept on the turns not to train."""
    if not isinstance(raw, list) or not raw:
        raise BadRow(f"`{name}` must be a non-empty list")
    names = {t["function"]["name"] for t in tools} if tools else None
    out: list[dict] = []
    previous = None
    for i, message in enumerate(raw):
        where = f"{name}[{i + offset}]"
        if not isinstance(message, dict):
            raise BadRow(f"{where} must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRow(f"{where}: unknown role {role!r} (use {', '.join(ROLES)})")
        calls = message.get("tool_calls") if role == "assistant" else None
        if calls:
            if not isinstance(calls, list):
                raise BadRow(f"{where}: `tool_calls` must be a list")
            calls = [_tool_call(c, f"{where}.tool_calls[{j}]", names) for j, c in enumerate(calls)]
            content = "" if content is None else content  # OpenAI: null (or absent) beside tool calls
        if not isinstance(content, str):
            got = "null" if content is None else type(content).__name__
            raise BadRow(f"{where}: `content` must be a string, got {got}")
        if not content.strip() and role != "system" and not calls:
            raise BadRow(f"{where}: empty {role} message")
        if role == "system" and i != 0:
            raise BadRow(f"{where}: a system message may only come first")
        if role == "assistant" and previous not in ("user", "tool", "system"):
            raise BadRow(f"{where}: an assistant turn must follow a user turn")
        if role == "user" and previous == "user":
            raise BadRow(f"{where}: two user turns in a row")
        if role == "tool" and not (previous == "tool" or (previous == "assistant" and out[-1].get("tool_calls"))):
            raise BadRow(f"{where}: a tool result must follow an assistant turn with `tool_calls`")
        normal = {"role": role, "content": content}
        if calls:
            normal["tool_calls"] = calls
        if role == "tool":
            normal.update({k: message[k] for k in ("tool_call_id", "name") if isinstance(message.get(k), str)})
        if message.get("weight") is not None:  # (a hub dataset's Arrow rows carry null for an absent key)
            weight = message["weight"]
            if role != "assistant":
                raise BadRow(f"{where}: `weight` is for assistant turns only")
            if weight not in (0, 1) or isinstance(weight, bool):
                raise BadRow(f"{where}: `weight` must be 0 (not trained) or 1 (trained), got {weight!r}")
            if weight == 0:
                normal["weight"] = 0
        out.append(normal)
        previous = role
    answers = [m for m in out if m["role"] == "assistant"]
    if not answers:
        raise BadRow(f"`{name}` has no assistant turn: nothing to train on")
    if all(m.get("weight") == 0 for m in answers):
        raise BadRow(f"every assistant turn in `{name}` has weight 0: nothing to train on")
    return out


def _top_system(row: dict) -> list[dict]:
    system = row.get("system")
    if system is None or system == "":
        return []
    if not isinstance(system, str):
        raise BadRow(f"`system` must be a string, got {type(system).__name__}")
    return [{"role": "system", "content": system}]


def _sharegpt_turn(turn: object, where: str) -> dict:
    if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
        raise BadRow(f"{where} needs `from` and `value`")
    speaker, value = turn["from"], turn["value"]
    if not isinstance(speaker, str) or speaker not in SHAREGPT_ROLES:
        raise BadRow(f"{where}: unknown speaker {speaker!r} (use human, gpt, system, function_call or observation)")
    if speaker != "function_call":
        return {"role": SHAREGPT_ROLES[speaker], "content": value}
    # LLaMA-Factory: the value is the call as JSON, {"name", "arguments"}, or a list of them (parallel calls).
    try:
        calls = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as exc:
        raise BadRow(f"{where}: the function call is not valid JSON: {exc.msg} (column {exc.colno})") from None
    calls = calls if isinstance(calls, list) else [calls]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def _sharegpt_messages(row: dict, tools: list[dict] | None, turns: object = None) -> list[dict]:
    turns = row.get("conversations") if turns is None else turns
    if not isinstance(turns, list):
        raise BadRow("`conversations` must be a list")
    system = _top_system(row)
    if system and turns and isinstance(turns[0], dict) and turns[0].get("from") == "system":
        raise BadRow("both a top-level `system` and a system turn: keep one")
    converted = [_sharegpt_turn(t, f"conversations[{i}]") for i, t in enumerate(turns)]
    return _messages(system + converted, "conversations", tools, offset=-len(system))


def _alpaca_messages(row: dict) -> list[dict]:
    """System, then the history pairs (trained, as LLaMA-Factory does), then instruction + input -> output."""
    instruction, output = _string(row, "instruction"), _string(row, "output")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise BadRow(f"`input` must be a string, got {type(extra).__name__}")
    history = row.get("history") or []
    if not isinstance(history, list):
        raise BadRow("`history` must be a list of [instruction, response] pairs")
    messages = _top_system(row)
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) and s.strip() for s in pair)):
            raise BadRow(f"history[{i}] must be a pair of non-empty strings [instruction, response]")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = instruction + (f"\n\n{extra}" if extra else "")
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return _messages(messages, "row", None)


def _prompt_completion(row: dict, tools: list[dict] | None) -> dict:
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
    messages = _messages(prompt + completion, "prompt+completion", tools)
    if messages[len(prompt)]["role"] != "assistant":
        raise BadRow("`completion` must start with an assistant turn")
    return {"prompt": messages[: len(prompt)], "completion": messages[len(prompt) :]}


def _preference(row: dict) -> dict:
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
    tools = _tools(row)
    if prompt is None:  # implicit prompt: the turns both conversations share
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if not isinstance(prompt, list) or not prompt:
        raise BadRow("`prompt` must be a non-empty list of messages like `chosen` and `rejected`")
    out = {"prompt": None, "chosen": None, "rejected": None}
    for key, answer in (("chosen", chosen), ("rejected", rejected)):
        messages = _messages(prompt + answer, f"prompt+{key}", tools)
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


def _sharegpt_preference(row: dict) -> dict:
    """LLaMA-Factory: `conversations` is the prompt; `chosen` and `rejected` are one answer turn each."""
    tools = _tools(row)
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRow("`conversations` must be a non-empty list (the prompt)")
    out: dict = {}
    for key in ("chosen", "rejected"):
        answer = row[key]
        if not isinstance(answer, dict) or "value" not in answer:
            raise BadRow(f'`{key}` must be one turn, {{"from": "gpt", "value": ...}}')
        messages = _sharegpt_messages(row, tools, turns + [{"from": answer.get("from", "gpt"), **answer}])
        if messages[-1]["role"] != "assistant":
            raise BadRow(f"`{key}` must be an assistant turn (from: gpt)")
        out["prompt"], out[key] = messages[:-1], messages[-1:]
    return {**out, **({"tools": tools} if tools else {})}


def load_split(
    task_dir: Path,
    files: list[str],
    config: TaskConfig,
    problems: list[Problem],
    load_hub: bool = True,
    notices: list[str] | None = None,
) -> list[dict]:
    """Read, check and normalise the rows of one split; record every problem in `problems`.

    `load_hub=False` (the launcher's light check) leaves `hub:` datasets to the token checks and the host.
    Columns the detected format does not read are named in `notices`.
    """
    rows: list[dict] = []
    seen_formats: dict[str, str] = {}
    shapes: dict[str, set[str]] = {}
    for name in files:
        if name.startswith("hub:"):
            if load_hub:
                rows.extend(_load_hub(name[4:], config, problems))
            continue
        path = task_dir / name
        shown = _shown(task_dir, name)
        if not path.is_file():
            problems.append(Problem(shown, "data file not found", f"check data: in {task_dir}/task.yaml"))
            continue
        if path.suffix.lower() not in SUFFIXES:
            problems.append(Problem(shown, f"unknown file type {path.suffix!r}", f"use one of {', '.join(SUFFIXES)}"))
            continue
        file_format = None if config.data.format == "auto" else config.data.format
        local: list[Problem] = []
        count = 0
        unused: set[str] = set()
        for line, row in read_rows(path, local, config.data.encoding):
            count += 1
            where = f"{shown}:{line}"
            fmt = file_format or (detect_format(row, config) if isinstance(row, dict) else None)
            if fmt is None:
                local.append(Problem(where, f"cannot tell the format of this row (keys: {_keys(row)})", _FORMAT_HINT))
                continue
            if file_format is None:
                file_format = fmt
            if not isinstance(row, dict):
                local.append(Problem(where, f"expected a JSON object, got {type(row).__name__}"))
                continue
            try:
                normal = _normalised(row, file_format, config)
            except BadRow as exc:
                local.append(Problem(where, str(exc)))
                continue
            unused.update(k for k in row if k not in _used_columns(file_format, config))
            shapes.setdefault(shown, set()).add(_shape(normal))
            rows.append({**normal, WHERE: where})
        for p in local:  # read_rows names the real path; show it as the user wrote it
            p.where = p.where.replace(str(path), shown)
        problems.extend(local)
        if count == 0 and not local and not _unreadable_here(path):
            problems.append(Problem(shown, "no rows", "add at least one example"))
        if file_format:
            seen_formats[shown] = file_format
        if unused and notices is not None:
            names = ", ".join(f"`{k}`" for k in sorted(map(str, unused))[:8])
            notices.append(f"{shown}: column(s) {names} not used by the {file_format} format: ignored")
    if len(set().union(*shapes.values()) if shapes else ()) > 1:
        listing = ", ".join(f"{f} is {fmt} ({', '.join(sorted(shapes.get(f, ())))})" for f, fmt in seen_formats.items())
        problems.append(Problem(files[0], f"mixed data formats: {listing}", "convert them to one format"))
    return rows


def _unreadable_here(path: Path) -> bool:
    if path.suffix.lower() != ".parquet":
        return False
    import importlib.util

    return importlib.util.find_spec("pyarrow") is None


_FORMAT_HINT = (
    "rows need messages, conversations, instruction/output, prompt/completion, prompt/response, "
    "chosen/rejected or text (see README: data formats)"
)


def _used_columns(fmt: str, config: TaskConfig) -> set[str]:
    # The eval suite's answer column rides along in the same files (seed 003's test rows): it is used.
    suite = {config.eval_suite.expected_field} if config.eval_suite and config.eval_suite.expected_field else set()
    if fmt == "prompt_response":
        return {config.data.prompt_column, config.data.response_column, "system"} | suite
    return USED_COLUMNS.get(fmt, set()) | suite


def _shape(normal: dict) -> str:
    """What a normalised row trains as. SFT rows are all tokenized up front, so any of them mix; preference
    rows of strings (plain text) and of messages (chat template) do not."""
    if "chosen" in normal:
        return "preference strings" if isinstance(normal["chosen"], str) else "preference messages"
    return "classification" if "label" in normal else "sft"


def _keys(row) -> str:
    return ", ".join(list(row)[:6]) if isinstance(row, dict) else type(row).__name__


def _shown(task_dir: Path, name: str) -> str:
    return str(Path(task_dir) / name)


def _load_hub(spec: str, config: TaskConfig, problems: list[Problem]) -> list[dict]:
    """`hub:owner/name[:split]` through datasets.load_dataset (also accepts a local dataset folder)."""
    name, _, split = spec.partition(":")
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's to fix
        problems.append(Problem(f"hub:{spec}", f"could not load: {exc}".splitlines()[0], "check the name and split"))
        return []
    out = []
    for i, row in enumerate(ds, 1):
        fmt = config.data.format if config.data.format != "auto" else detect_format(row, config)
        problem = check_row(row, fmt, config) if fmt else _FORMAT_HINT
        if problem:
            problems.append(Problem(f"hub:{spec}:{i}", problem))
        else:
            out.append({**normalise(row, fmt, config), WHERE: f"hub:{spec}:{i}"})
    return out


def load_task_data(
    task_dir: Path, config: TaskConfig, load_hub: bool = True, notices: list[str] | None = None
) -> dict[str, list[dict]]:
    """All splits, checked; raises TaskError listing every bad row (capped) with the total count."""
    problems: list[Problem] = []
    splits = {
        split: load_split(task_dir, getattr(config.data, split), config, problems, load_hub, notices)
        for split in SPLITS
    }
    splits["eval_suite"] = load_eval_suite(task_dir, config, problems)
    if problems:
        total = len(problems)
        if total > MAX_LISTED:
            extra = Problem("", f"... and {total - MAX_LISTED} more problems ({total} in all)")
            problems = problems[:MAX_LISTED] + [extra]
        raise TaskError(problems)
    rng = random.Random(config.data.seed)
    train = splits["train"]
    if config.data.shuffle:
        rng.shuffle(train)
    if config.data.fraction < 1:
        train = train[: max(1, int(len(train) * config.data.fraction))]
    if not splits["eval"] and config.data.eval_split > 0 and len(train) > 1:
        cut = max(1, int(len(train) * config.data.eval_split))
        splits["eval"], train = train[:cut], train[cut:]
    splits["train"] = train
    return splits


def load_eval_suite(task_dir: Path, config: TaskConfig, problems: list[Problem]) -> list[dict]:
    """Rows of the eval suite: the prompt (chat messages before the last answer, and tools), and the expected call
    (that answer's first tool call) or the expected answer (eval_suite.expected_field)."""
    suite = config.eval_suite
    if not suite:
        return []
    path = task_dir / suite.file
    shown = _shown(task_dir, suite.file)
    if not path.is_file():
        problems.append(Problem(shown, "eval suite file not found", f"check eval_suite.file in {task_dir}/task.yaml"))
        return []
    from trainer.training.evaluate import suite_row

    rows = []
    local: list[Problem] = []
    for line, row in read_rows(path, local, config.data.encoding):
        where = f"{shown}:{line}"
        # Any chat shape the training data may have (OpenAI / TRL messages, ShareGPT, Alpaca), tools included.
        fmt = detect_format(row, config) if isinstance(row, dict) else None
        fmt = fmt if fmt in ("messages", "sharegpt", "alpaca") else "messages"
        problem = check_row(row, fmt, config)
        suite_one = None
        if problem is None:
            suite_one, problem = suite_row(normalise(row, fmt, config), suite.expected_field, row)
        if problem:
            local.append(Problem(where, problem))
            continue
        rows.append({**suite_one, WHERE: where})
    for p in local:
        p.where = p.where.replace(str(path), shown)
    problems.extend(local)
    return rows[: suite.limit]
