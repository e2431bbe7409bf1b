"""Rows from JSONL / JSON / CSV / Parquet, each checked, then normalised to one shape per task.

Reading and checking are pure Python (plus pyarrow for Parquet, imported only then), so the
launcher runs the same checks on the laptop as the trainer runs on the host. Every bad row is
reported as `file:line: problem`, all of them at once.
"""

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path

from trainer.config import Problem, TaskConfig, TaskError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
MAX_LISTED = 20
SPLITS = ("train", "eval", "test")
WHERE = "_where"  # each normalised row remembers its file:line, for errors found later (token checks)


def strip_where(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != WHERE} for row in rows]


def read_rows(path: Path, problems: list[Problem]) -> Iterator[tuple[int, object]]:
    """Yield (line number, row) from a data file; a row that does not parse becomes a Problem."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    problems.append(Problem(f"{path}:{number}", f"not valid JSON: {exc.msg} (column {exc.colno})"))
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(Problem(f"{path}:{exc.lineno}", f"not valid JSON: {exc.msg}"))
            return
        if not isinstance(data, list):
            problems.append(Problem(f"{path}:1", "a .json data file must hold a list of rows", "or use .jsonl"))
            return
        yield from ((i, row) for i, row in enumerate(data, 1))  # JSON arrays: "line" is the row number
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                yield reader.line_num, dict(row)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:  # a laptop with the light install: the host checks these rows
            return

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield i, row
    else:
        problems.append(Problem(str(path), f"unknown file type {suffix!r}", f"use one of {', '.join(SUFFIXES)}"))


def detect_format(row: dict, config: TaskConfig) -> str | None:
    if config.task in ("orpo", "dpo"):
        return "preference" if {"chosen", "rejected"} <= row.keys() else None
    if config.task == "classification":
        return "classification" if {"text", "label"} <= row.keys() else None
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if config.data.prompt_column in row and config.data.response_column in row:
        return "prompt_response"
    if "text" in row:
        return "text"
    return None


def check_row(row: object, fmt: str, config: TaskConfig) -> str | None:
    """Return what is wrong with one row in the given format, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if fmt == "messages":
        return _check_messages(row.get("messages"), "messages")
    if fmt == "sharegpt":
        turns = row.get("conversations")
        if not isinstance(turns, list):
            return "`conversations` must be a list"
        converted = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                return f"conversations[{i}] needs `from` and `value`"
            if turn["from"] not in SHAREGPT_ROLES:
                return f"conversations[{i}]: unknown speaker {turn['from']!r} (use human, gpt or system)"
            converted.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
        return _check_messages(converted, "conversations")
    required = {
        "alpaca": ("instruction", "output"),
        "prompt_response": (config.data.prompt_column, config.data.response_column),
        "text": ("text",),
        "preference": ("prompt", "chosen", "rejected"),
        "classification": ("text",),
    }[fmt]
    for key in required:
        if key not in row or row[key] is None:
            return f"missing `{key}`"
        if not isinstance(row[key], str):
            return f"`{key}` must be a string, got {type(row[key]).__name__}"
        if not row[key].strip():
            return f"`{key}` is empty"
    if fmt == "classification" and (row.get("label") is None or row.get("label") == ""):
        return "missing `label`"
    return None


def _check_messages(messages: object, name: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"`{name}` must be a non-empty list"
    previous = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"{name}[{i}] must be an object with role and content"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return f"{name}[{i}]: unknown role {role!r} (use {', '.join(ROLES)})"
        if not isinstance(content, str):
            return f"{name}[{i}]: `content` must be a string"
        if not content.strip() and role != "system":
            return f"{name}[{i}]: empty {role} message"
        if role == "system" and i != 0:
            return f"{name}[{i}]: a system message may only come first"
        if role == "assistant" and previous not in ("user", "tool"):
            return f"{name}[{i}]: an assistant turn must follow a user turn"
        if role == "user" and previous == "user":
            return f"{name}[{i}]: two user turns in a row"
        previous = role
    if not any(m["role"] == "assistant" for m in messages):
        return f"`{name}` has no assistant turn: nothing to train on"
    return None


def load_split(
    task_dir: Path, files: list[str], config: TaskConfig, problems: list[Problem], load_hub: bool = True
) -> list[dict]:
    """Read, check and normalise the rows of one split; record every problem in `problems`.

    `load_hub=False` (the launcher's light check) leaves `hub:` datasets to the token checks and the host.
    """
    rows: list[dict] = []
    seen_formats: dict[str, str] = {}
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
        for line, row in read_rows(path, local):
            count += 1
            where = f"{shown}:{line}"
            fmt = file_format or (detect_format(row, config) if isinstance(row, dict) else None)
            if fmt is None:
                local.append(Problem(where, f"cannot tell the format of this row (keys: {_keys(row)})", _FORMAT_HINT))
                continue
            if file_format is None:
                file_format = fmt
            problem = check_row(row, file_format, config)
            if problem:
                local.append(Problem(where, problem))
                continue
            rows.append({**normalise(row, file_format, config), WHERE: where})
        for p in local:  # read_rows names the real path; show it as the user wrote it
            p.where = p.where.replace(str(path), shown)
        problems.extend(local)
        if count == 0 and not local and not _unreadable_here(path):
            problems.append(Problem(shown, "no rows", "add at least one example"))
        if file_format:
            seen_formats[shown] = file_format
    if len(set(_family(f) for f in seen_formats.values())) > 1:
        listing = ", ".join(f"{f} is {fmt}" for f, fmt in seen_formats.items())
        problems.append(Problem(files[0], f"mixed data formats: {listing}", "convert them to one format"))
    return rows


def _unreadable_here(path: Path) -> bool:
    if path.suffix.lower() != ".parquet":
        return False
    import importlib.util

    return importlib.util.find_spec("pyarrow") is None


_FORMAT_HINT = "rows need messages, conversations, instruction/output, prompt/response or text"


def _family(fmt: str) -> str:
    # These all become chat messages, so mixing them is harmless.
    return "chat" if fmt in ("messages", "sharegpt", "alpaca") else fmt


def _keys(row) -> str:
    return ", ".join(list(row)[:6]) if isinstance(row, dict) else type(row).__name__


def _shown(task_dir: Path, name: str) -> str:
    return str(Path(task_dir) / name)


def normalise(row: dict, fmt: str, config: TaskConfig) -> dict:
    """One shape per family: chat rows -> messages; prompt/response -> prompt/completion turns."""
    system = config.data.system_prompt
    if fmt == "messages":
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    elif fmt == "sharegpt":
        messages = [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]
    elif fmt == "alpaca":
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    elif fmt == "prompt_response":
        prompt = [{"role": "user", "content": row[config.data.prompt_column]}]
        own_system = row.get("system") or system
        if own_system:
            prompt.insert(0, {"role": "system", "content": own_system})
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": row[config.data.response_column]}]}
    elif fmt == "preference":
        return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
    elif fmt == "classification":
        return {"text": row["text"], "label": row["label"]}
    else:
        return {"text": row["text"]}
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages}


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


def load_task_data(task_dir: Path, config: TaskConfig, load_hub: bool = True) -> dict[str, list[dict]]:
    """All splits, checked; raises TaskError listing every bad row (capped) with the total count."""
    problems: list[Problem] = []
    splits = {split: load_split(task_dir, getattr(config.data, split), config, problems, load_hub) for split in SPLITS}
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
    """Rows of the eval suite: chat messages ending with the expected answer, plus the expected function."""
    suite = config.eval_suite
    if not suite:
        return []
    path = task_dir / suite.file
    shown = _shown(task_dir, suite.file)
    if not path.is_file():
        problems.append(Problem(shown, "eval suite file not found", f"check eval_suite.file in {task_dir}/task.yaml"))
        return []
    rows = []
    local: list[Problem] = []
    for line, row in read_rows(path, local):
        where = f"{shown}:{line}"
        problem = check_row(row, "messages", config)
        if problem is None and not isinstance(row.get(suite.expected_field), str):
            problem = f"missing `{suite.expected_field}` (the expected function name)"
        if problem:
            local.append(Problem(where, problem))
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # the prompt is everything before the answer
        rows.append({"messages": messages, "expected": row[suite.expected_field], WHERE: where})
    for p in local:
        p.where = p.where.replace(str(path), shown)
    problems.extend(local)
    return rows[: suite.limit]
