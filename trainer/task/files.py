"""Reading a task's files: data rows from JSONL / JSON / CSV / Parquet or a `hub:` dataset, each located as
`file:line`, with the bytes decoded and every string checked to be Unicode, nesting bounded.

Pure Python (pyarrow for Parquet and datasets for `hub:` are imported only then), so the launcher reads the same
way on the laptop as the trainer does on the host. Whatever a file holds, a bad row becomes a Problem, never an
exception.
"""

import codecs
import csv
import importlib.util
import io
import json
from collections.abc import Iterator
from pathlib import Path

from trainer.task.problems import Problem, TaskError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
WHERE = "_where"  # each normalised row remembers its file:line, for errors found later (token checks)


def strip_where(rows: list[dict]) -> list[dict]:
    """The rows without the file:line each remembers (WHERE)."""
    return [{k: v for k, v in row.items() if k != WHERE} for row in rows]


def shown_path(task_dir: Path, name: str) -> str:
    """A data file as the user wrote it in task.yaml, under the task folder."""
    return str(Path(task_dir) / name)


def show_as(problems: list[Problem], path: Path, shown: str) -> None:
    """read_rows names the real path; show it as the user wrote it."""
    for p in problems:
        p.where = p.where.replace(str(path), shown)


def decode_text(data: bytes, path: Path | str, encoding: str) -> str:
    """Bytes -> text, or a Problem naming the first byte that is not `encoding`, by line and column."""
    try:
        # utf-8-sig: a byte-order mark (Excel and Notepad write one) is not part of the first row
        return data.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start : exc.start + 1].hex()
        hint = (
            "save the file as UTF-8, or set data.encoding (e.g. cp1252 for a CSV saved by Excel on Windows)"
            if str(path).lower().endswith((".csv", ".jsonl", ".json"))
            else "save the file as UTF-8"
        )
        problem = Problem(
            f"{path}:{line}",
            f"not valid {encoding}: byte 0x{byte} at column {column} (byte {exc.start} of the file)",
            hint,
        )
        raise TaskError([problem]) from None


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


def parquet_unreadable(path: Path) -> bool:
    """A Parquet file on a laptop with the light install (no pyarrow): its rows are the host's to check."""
    if path.suffix.lower() != ".parquet":
        return False
    return importlib.util.find_spec("pyarrow") is None


def hub_rows(spec: str, problems: list[Problem]) -> Iterator[tuple[int, dict]]:
    """(row number, row) of `hub:owner/name[:split]` through datasets.load_dataset (also a local dataset folder)."""
    name, _, split = spec.partition(":")
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's to fix
        problems.append(Problem(f"hub:{spec}", f"could not load: {exc}".splitlines()[0], "check the name and split"))
        return
    yield from enumerate(ds, 1)
