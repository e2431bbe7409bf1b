"""Plain data (parsed YAML, a run's saved config) -> the schema's dataclasses: each value coerced to its field's type
as YAML writers mean it (`1e-5` read as a string is a number, `yes` is true), and every value that cannot be
(an unknown key with a did-you-mean, a wrong type, a choice not allowed, a lone surrogate) reported as a Problem."""

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from trainer.task.problems import Problem


def build(cls, raw: Any, prefix: str, where, problems: list[Problem]):
    """An instance of dataclass `cls` from the mapping at dotted key `prefix`; `where(key)` locates a problem."""
    if not isinstance(raw, dict):
        problems.append(Problem(where(prefix), f"expected a mapping, got {_kind(raw)}", f"write {prefix}: as keys"))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(fields)}"
            problems.append(Problem(where(dotted), "unknown key", hint))
            continue
        kwargs[key] = _coerce(value, hints[key], fields[key], dotted, where, problems)
    return cls(**kwargs)


def _coerce(value, annotation, fld, dotted, where, problems):
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if value is None:
        if optional:
            return None
        problems.append(Problem(where(dotted), "must not be empty", "give it a value or remove the key"))
        return _default(fld)
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, dotted, where, problems)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            hint = "e.g. {min_lr_rate: 0.1}"
            problems.append(Problem(where(dotted), f"expected a mapping, got {_kind(value)}", hint))
            return {}
        return {str(k): v for k, v in value.items()}
    if origin is list:
        items = value if isinstance(value, list) else [value]
        bad = [i for i in items if not isinstance(i, str)]
        if bad:
            problems.append(Problem(where(dotted), "expected a list of strings", f"got {bad[0]!r}"))
        elif any(_not_unicode(i, dotted, where, problems) for i in items):
            return _default(fld)
        return [str(i) for i in items]
    coerced = _scalar(value, annotation)
    if isinstance(coerced, str) and _not_unicode(coerced, dotted, where, problems):
        return _default(fld)
    if coerced is _INVALID:
        problems.append(
            Problem(where(dotted), f"expected {annotation.__name__}, got {value!r}", f"example: {_example(annotation)}")
        )
        return _default(fld)
    if isinstance(coerced, float) and not math.isfinite(coerced):
        problems.append(
            Problem(where(dotted), f"must be a finite number, got {value!r}", f"example: {_example(float)}")
        )
        return _default(fld)
    choices = fld.metadata.get("choices")
    if choices and coerced not in choices:
        close = difflib.get_close_matches(str(coerced), choices, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"one of: {', '.join(choices)}"
        problems.append(Problem(where(dotted), f"{coerced!r} is not allowed", hint))
    return coerced


_INVALID = object()


def _not_unicode(text: str, dotted: str, where, problems: list[Problem]) -> bool:
    """A lone surrogate (YAML's "\\ud800" escape) is no text: nothing could write it out, not even run.json."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        message = f"not valid Unicode: a lone surrogate \\u{ord(text[exc.start]):04x}"
        problems.append(Problem(where(dotted), message, "write the character itself, or a valid surrogate pair"))
        return True
    return False


def _scalar(value, annotation):
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
            return value.lower() in ("true", "yes", "on")
        return _INVALID
    if annotation in (int, float):
        if isinstance(value, bool):
            return _INVALID
        if isinstance(value, str):  # PyYAML reads `1e-5` (no dot) as a string
            try:
                value = float(value.strip().replace("_", ""))
            except ValueError:
                return _INVALID
        if not isinstance(value, (int, float)):
            return _INVALID
        if annotation is int:
            return int(value) if float(value).is_integer() else _INVALID
        return float(value)
    if annotation is str:
        return value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) else _INVALID
    return value


def _example(annotation) -> str:
    return {int: "8", float: "2e-4", bool: "true", str: "a string"}.get(annotation, "see README")


def _default(fld):
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    return None if fld.default is dataclasses.MISSING else fld.default


def _kind(value) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), type(value).__name__
    )
