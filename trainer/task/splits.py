"""A task's data: the rows of each split (train, eval, test, and the eval suite's), read, checked and normalised,
every bad row reported at once; then the training rows shuffled, cut to data.fraction, and split for eval."""

import random
from pathlib import Path

from trainer.task.chat import ARGUMENTS_TWICE, NO_TOOLS
from trainer.task.files import SUFFIXES, WHERE, hub_rows, parquet_unreadable, read_rows, show_as, shown_path
from trainer.task.formats import FORMAT_HINT, check_row, detect_format, normalise, row_shape, used_columns
from trainer.task.problems import BadRow, Problem, TaskError
from trainer.task.schema import TaskConfig
from trainer.task.suite import load_eval_suite

SPLITS = ("train", "eval", "test")
MAX_LISTED = 20


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
        raise TaskError(capped(problems))
    splits["train"], held_out = _training_rows(splits["train"], config, split_eval=not splits["eval"])
    if held_out:
        splits["eval"] = held_out
    return splits


def capped(problems: list[Problem]) -> list[Problem]:
    """The first MAX_LISTED problems, and how many more there are."""
    total = len(problems)
    if total <= MAX_LISTED:
        return problems
    return problems[:MAX_LISTED] + [Problem("", f"... and {total - MAX_LISTED} more problems ({total} in all)")]


def _training_rows(train: list[dict], config: TaskConfig, split_eval: bool) -> tuple[list[dict], list[dict]]:
    """(training rows, eval rows cut off them): shuffled by data.seed, cut to data.fraction, then data.eval_split
    of them held out for evaluation when the task names no eval files (`split_eval`)."""
    rng = random.Random(config.data.seed)
    if config.data.shuffle:
        rng.shuffle(train)
    if config.data.fraction < 1:
        train = train[: max(1, int(len(train) * config.data.fraction))]
    if split_eval and config.data.eval_split > 0 and len(train) > 1:
        cut = max(1, int(len(train) * config.data.eval_split))
        return train[cut:], train[:cut]
    return train, []


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
                rows.extend(_hub_split(name[4:], config, problems, notices))
            continue
        path = task_dir / name
        shown = shown_path(task_dir, name)
        if not path.is_file():
            problems.append(Problem(shown, "data file not found", f"check data: in {task_dir}/task.yaml"))
            continue
        if path.suffix.lower() not in SUFFIXES:
            problems.append(Problem(shown, f"unknown file type {path.suffix!r}", f"use one of {', '.join(SUFFIXES)}"))
            continue
        file_rows, file_shapes, file_format = _read_file(path, shown, config, problems, notices)
        rows.extend(file_rows)
        if file_shapes:
            shapes.setdefault(shown, set()).update(file_shapes)
        if file_format:
            seen_formats[shown] = file_format
    if len(set().union(*shapes.values()) if shapes else ()) > 1:
        listing = ", ".join(f"{f} is {fmt} ({', '.join(sorted(shapes.get(f, ())))})" for f, fmt in seen_formats.items())
        problems.append(Problem(files[0], f"mixed data formats: {listing}", "convert them to one format"))
    return rows


def _read_file(
    path: Path, shown: str, config: TaskConfig, problems: list[Problem], notices: list[str] | None
) -> tuple[list[dict], set[str], str | None]:
    """(the file's normalised rows, what they train as, its format). The format is data.format, or else the first
    row's: every row of a file is read in that one."""
    file_format = None if config.data.format == "auto" else config.data.format
    local: list[Problem] = []
    rows: list[dict] = []
    shapes: set[str] = set()
    count = 0
    unused: set[str] = set()
    lenient: dict[str, list[int]] = {}  # what was read as a peer reads it -> the lines
    for line, row in read_rows(path, local, config.data.encoding):
        count += 1
        where = f"{shown}:{line}"
        fmt = file_format or (detect_format(row, config) if isinstance(row, dict) else None)
        if fmt is None:
            local.append(Problem(where, f"cannot tell the format of this row (keys: {_keys(row)})", FORMAT_HINT))
            continue
        if file_format is None:
            file_format = fmt
        if not isinstance(row, dict):
            local.append(Problem(where, f"expected a JSON object, got {type(row).__name__}"))
            continue
        notes: set[str] = set()
        try:
            normal = normalise(row, file_format, config, notes)
        except BadRow as exc:
            local.append(Problem(where, str(exc)))
            continue
        for note in notes:
            lenient.setdefault(note, []).append(line)
        unused.update(k for k in row if k not in used_columns(file_format, config))
        shapes.add(row_shape(normal))
        rows.append({**normal, WHERE: where})
    show_as(local, path, shown)
    problems.extend(local)
    if count == 0 and not local and not parquet_unreadable(path):
        problems.append(Problem(shown, "no rows", "add at least one example"))
    if unused and notices is not None:
        names = ", ".join(f"`{k}`" for k in sorted(map(str, unused))[:8])
        notices.append(f"{shown}: column(s) {names} not used by the {file_format} format: ignored")
    if notices is not None:
        notices.extend(lenient_notices(shown, lenient))
    return rows, shapes, file_format


def lenient_notices(shown: str, lenient: dict[str, list[int]]) -> list[str]:
    """One notice per file for each thing a peer accepts that gpurun read leniently, with how many lines."""
    said = {
        ARGUMENTS_TWICE: "give tool-call `arguments` as a JSON string holding the object's JSON text "
        "(as OpenAI's cookbook data does, and OpenAI accepts): decoded twice",
        NO_TOOLS: "hold tool calls but no `tools` list: the prompts carry no function schemas "
        "(the model learns the calls without seeing the signatures)",
    }
    out = []
    for note, what in said.items():
        lines = lenient.get(note)
        if lines:
            shown_lines = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
            out.append(f"{shown}: {len(lines)} line(s) (line{'s' if len(lines) > 1 else ''} {shown_lines}) {what}")
    return out


def _keys(row) -> str:
    return ", ".join(list(row)[:6]) if isinstance(row, dict) else type(row).__name__


def _hub_split(spec: str, config: TaskConfig, problems: list[Problem], notices: list[str] | None) -> list[dict]:
    """The rows of `hub:owner/name[:split]`, checked and normalised; each located as `hub:spec:N`."""
    out = []
    lenient: dict[str, list[int]] = {}
    for i, row in hub_rows(spec, problems):
        fmt = config.data.format if config.data.format != "auto" else detect_format(row, config)
        problem = check_row(row, fmt, config) if fmt else FORMAT_HINT
        if problem:
            problems.append(Problem(f"hub:{spec}:{i}", problem))
            continue
        notes: set[str] = set()
        out.append({**normalise(row, fmt, config, notes), WHERE: f"hub:{spec}:{i}"})
        for note in notes:
            lenient.setdefault(note, []).append(i)
    if notices is not None:
        notices.extend(lenient_notices(f"hub:{spec}", lenient))
    return out
