"""Chat rows: the turns of OpenAI / TRL `messages`, ShareGPT `conversations` and Alpaca rows, with their tools and
tool calls, checked and normalised to OpenAI's messages as chat templates take them. Each check raises BadRow
saying what is wrong, in the words of the row's own format.

What peers accept and gpurun reads too, each noted in `notes` (a set the caller passes, to say so once per file):
tool-call arguments written as a JSON string of the object's JSON text (ARGUMENTS_TWICE), and tool calls in a row
without a `tools` list (NO_TOOLS).
"""

import json

from trainer.task.problems import BadRow

ROLES = ("system", "user", "assistant", "tool")
# What `notes` may hold: how a row was read leniently, as a peer reads it.
ARGUMENTS_TWICE = "arguments encoded twice"  # OpenAI's cookbook: "arguments": "\"{\\\"location\\\": ...}\""
NO_TOOLS = "tool calls without tools"  # axolotl: tool_calls, and no `tools` list to render into the prompt
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


def required_string(row: dict, key: str, allow_empty: bool = False) -> str:
    """row[key], which must be a string (and not blank unless `allow_empty`)."""
    if key not in row or row[key] is None:
        raise BadRow(f"missing `{key}`")
    if not isinstance(row[key], str):
        raise BadRow(f"`{key}` must be a string, got {type(row[key]).__name__}")
    if not allow_empty and not row[key].strip():
        raise BadRow(f"`{key}` is empty")
    return row[key]


def row_tools(row: dict) -> list[dict] | None:
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


def _tool_call(call: object, where: str, names: set[str] | None, notes: set[str] | None = None) -> dict:
    """One call as chat templates take it: arguments parsed to an object (OpenAI sends a JSON string).

    `names` None: the row has no `tools` list, and any function name is taken (noted as NO_TOOLS)."""
    # OpenAI nests the call under "function"; LLaMA-Factory's function_call value and some TRL rows do not.
    function = call.get("function", call) if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise BadRow(f"{where}: a tool call needs a function `name`")
    if names is None:
        _note(notes, NO_TOOLS)
    elif name not in names:
        raise BadRow(f"{where}: calls {name!r}, which is not in `tools` ({', '.join(sorted(names))})")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise BadRow(
                f"{where}: the arguments of {name!r} are not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        if isinstance(arguments, str):  # a JSON string holding the object's JSON text, which OpenAI accepts
            arguments = _decoded_again(arguments, where, name)
            _note(notes, ARGUMENTS_TWICE)
    if not isinstance(arguments, dict):
        raise BadRow(f"{where}: the arguments of {name!r} must be a JSON object, got {type(arguments).__name__}")
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def _decoded_again(text: str, where: str, name: str) -> dict:
    """The object whose JSON text a JSON string held; BadRow when the string holds no JSON object."""
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise BadRow(f"{where}: the arguments of {name!r} must be a JSON object, got a JSON string {text[:40]!r}")
    return arguments


def _note(notes: set[str] | None, note: str) -> None:
    if notes is not None:
        notes.add(note)


def chat_messages(
    raw: object, name: str, tools: list[dict] | None, offset: int = 0, notes: set[str] | None = None
) -> list[dict]:
    """Checked chat messages, normalised: tool calls parsed, `weight: 0` kept on the turns not to train."""
    if not isinstance(raw, list) or not raw:
        raise BadRow(f"`{name}` must be a non-empty list")
    names = {t["function"]["name"] for t in tools} if tools else None
    out: list[dict] = []
    for i, message in enumerate(raw):
        out.append(_turn(message, f"{name}[{i + offset}]", i, out[-1] if out else None, names, notes))
    answers = [m for m in out if m["role"] == "assistant"]
    if not answers:
        raise BadRow(f"`{name}` has no assistant turn: nothing to train on")
    if all(m.get("weight") == 0 for m in answers):
        raise BadRow(f"every assistant turn in `{name}` has weight 0: nothing to train on")
    return out


def _turn(
    message: object, where: str, i: int, before: dict | None, names: set[str] | None, notes: set[str] | None
) -> dict:
    """One message, checked against the turn before it (`before`, already normalised), and normalised."""
    if not isinstance(message, dict):
        raise BadRow(f"{where} must be an object with role and content")
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or role not in ROLES:
        raise BadRow(f"{where}: unknown role {role!r} (use {', '.join(ROLES)})")
    calls = message.get("tool_calls") if role == "assistant" else None
    if calls:
        if not isinstance(calls, list):
            raise BadRow(f"{where}: `tool_calls` must be a list")
        calls = [_tool_call(c, f"{where}.tool_calls[{j}]", names, notes) for j, c in enumerate(calls)]
        content = "" if content is None else content  # OpenAI: null (or absent) beside tool calls
    if not isinstance(content, str):
        got = "null" if content is None else type(content).__name__
        raise BadRow(f"{where}: `content` must be a string, got {got}")
    if not content.strip() and role != "system" and not calls:
        raise BadRow(f"{where}: empty {role} message")
    _check_order(role, where, i, before)
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
    return normal


def _check_order(role: str, where: str, i: int, before: dict | None) -> None:
    """Who may speak after whom: system first, an answer after a question, a tool result after a call."""
    previous = before["role"] if before else None
    if role == "system" and i != 0:
        raise BadRow(f"{where}: a system message may only come first")
    if role == "assistant" and previous not in ("user", "tool", "system"):
        raise BadRow(f"{where}: an assistant turn must follow a user turn")
    if role == "user" and previous == "user":
        raise BadRow(f"{where}: two user turns in a row")
    if role == "tool" and not (previous == "tool" or (previous == "assistant" and before.get("tool_calls"))):
        raise BadRow(f"{where}: a tool result must follow an assistant turn with `tool_calls`")


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


def sharegpt_messages(
    row: dict, tools: list[dict] | None, turns: object = None, notes: set[str] | None = None
) -> list[dict]:
    turns = row.get("conversations") if turns is None else turns
    if not isinstance(turns, list):
        raise BadRow("`conversations` must be a list")
    system = _top_system(row)
    if system and turns and isinstance(turns[0], dict) and turns[0].get("from") == "system":
        raise BadRow("both a top-level `system` and a system turn: keep one")
    converted = [_sharegpt_turn(t, f"conversations[{i}]") for i, t in enumerate(turns)]
    return chat_messages(system + converted, "conversations", tools, offset=-len(system), notes=notes)


def alpaca_messages(row: dict) -> list[dict]:
    """System, then the history pairs (trained, as LLaMA-Factory does), then instruction + input -> output."""
    instruction, output = required_string(row, "instruction"), required_string(row, "output")
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
    return chat_messages(messages, "row", None)
