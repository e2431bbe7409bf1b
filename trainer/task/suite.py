"""The eval suite's rows (eval_suite.file): each chat row becomes the prompt (the messages before its last answer,
and its tools) and what the reply is scored against, that answer's first tool call or the row's expected_field."""

import json
from pathlib import Path

from trainer.task.files import WHERE, read_rows, show_as, shown_path
from trainer.task.formats import check_row, detect_format, normalise
from trainer.task.problems import Problem
from trainer.task.schema import TaskConfig

# The suite reads any chat shape the training data may have (OpenAI / TRL messages, ShareGPT, Alpaca), tools included.
CHAT_FORMATS = ("messages", "sharegpt", "alpaca")


def load_eval_suite(task_dir: Path, config: TaskConfig, problems: list[Problem]) -> list[dict]:
    """Rows of the eval suite: the prompt (chat messages before the last answer, and tools), and the expected call
    (that answer's first tool call) or the expected answer (eval_suite.expected_field)."""
    suite = config.eval_suite
    if not suite:
        return []
    path = task_dir / suite.file
    shown = shown_path(task_dir, suite.file)
    if not path.is_file():
        problems.append(Problem(shown, "eval suite file not found", f"check eval_suite.file in {task_dir}/task.yaml"))
        return []
    rows = []
    local: list[Problem] = []
    for line, row in read_rows(path, local, config.data.encoding):
        where = f"{shown}:{line}"
        fmt = detect_format(row, config) if isinstance(row, dict) else None
        fmt = fmt if fmt in CHAT_FORMATS else "messages"
        problem = check_row(row, fmt, config)
        suite_one = None
        if problem is None:
            suite_one, problem = suite_row(normalise(row, fmt, config), suite.expected_field, row)
        if problem:
            local.append(Problem(where, problem))
            continue
        rows.append({**suite_one, WHERE: where})
    show_as(local, path, shown)
    problems.extend(local)
    return rows[: suite.limit]


def suite_row(normal: dict, expected_field: str, row: dict) -> tuple[dict | None, str | None]:
    """A checked, normalised chat row -> (suite row, None), or (None, what is wrong with it).

    The prompt is everything before the last assistant turn; what it is scored against is that turn's tool call,
    or the row's `expected_field` when one is set.
    """
    messages = normal.get("messages") or []
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return None, "no assistant turn: nothing to score against"
    out = {"messages": [{k: v for k, v in m.items() if k != "weight"} for m in messages[:last]]}
    if normal.get("tools"):
        out["tools"] = normal["tools"]
    if expected_field:
        value = row.get(expected_field)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or value == "":
            return None, f"missing `{expected_field}` (the expected answer, eval_suite.expected_field)"
        out["expected"] = value
        return out, None
    call = expected_call(messages[last:])
    if call is None:
        return None, (
            "the last assistant turn holds no `tool_calls`, so there is no call to score: "
            "add one, or set eval_suite.expected_field to a column holding the expected answer"
        )
    out["call"] = call
    return out, None


def expected_call(messages: list[dict]) -> dict | None:
    """The first tool call of the last assistant turn, as {"name", "arguments"}, or None."""
    answers = [m for m in messages if m.get("role") == "assistant"]
    calls = answers[-1].get("tool_calls") if answers else None
    if not calls:
        return None
    function = calls[0].get("function", calls[0])
    return as_call(function)


def as_call(value: dict) -> dict | None:
    """{"name", "arguments"} from one parsed call; arguments written as a JSON string (OpenAI's way) are parsed.
    The one shape of a call both sides of the score take: the row's expected call and the calls a reply holds."""
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # kept as written: it can never equal the expected object
    return {"name": name, "arguments": arguments}
