"""Reading `task.yaml` (and an experiment overlay): the mapping it holds, and the file:line of every key so a problem
can point at it. Duplicate keys, which YAML would resolve silently, and runaway nesting are problems too."""

import re
from pathlib import Path

import yaml

from trainer.task.files import decode_text
from trainer.task.problems import Problem, TaskError

MAX_YAML_DEPTH = 100


def read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    """Parse YAML, and remember the line of every key (dotted key -> "file:line") so errors can point at it."""
    text = decode_text(path.read_bytes(), path, "utf-8")
    if _bracket_depth(text) > MAX_YAML_DEPTH:  # PyYAML takes seconds per thousand levels before it gives up
        hint = "a task is a few levels deep: is this the right file?"
        raise TaskError([Problem(str(path), f"not valid YAML: nested more than {MAX_YAML_DEPTH} levels deep", hint)])
    node, data = _parse(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TaskError([Problem(f"{path}:1", "the file must be a mapping of keys", "see README: task.yaml")])
    lines, duplicates = _key_lines(node, path)
    if duplicates:
        raise TaskError(duplicates)
    return data, {k: f"{path}:{v}" for k, v in lines.items()}


def _parse(text: str, path: Path) -> tuple[yaml.Node | None, object]:
    """(the node tree, which knows each key's line; the data), or a TaskError at the line YAML stopped on."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problem = Problem(f"{path}{line}", f"not valid YAML: {reason}", "check indentation and quoting")
        raise TaskError([problem]) from None
    except RecursionError:
        raise TaskError(
            [Problem(str(path), "not valid YAML: nested too deeply", "a task is a few levels deep")]
        ) from None


def _key_lines(node: yaml.Node | None, path: Path) -> tuple[dict[str, int], list[Problem]]:
    """(dotted key -> the line it is on; a Problem for each key written twice in one mapping)."""
    lines: dict[str, int] = {}
    duplicates: list[Problem] = []
    seen: set[int] = set()  # an alias repeats a node: walk it once (a "billion laughs" file stays cheap)

    def walk(n, prefix):
        if not isinstance(n, yaml.MappingNode) or id(n) in seen:
            return
        seen.add(id(n))
        here: dict[str, int] = {}
        for key_node, value_node in n.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a complex key: the schema reports it as an unknown key
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.value in here and key_node.value != "<<":
                # PyYAML keeps the last one silently: the user edited one and the other wins.
                duplicates.append(
                    Problem(
                        f"{path}:{line}",
                        f"`{key}` appears twice (first on line {here[key_node.value]})",
                        "remove one of them: YAML would keep only the last",
                    )
                )
            here.setdefault(key_node.value, line)
            lines.setdefault(key, line)
            walk(value_node, key)

    walk(node, "")
    return lines, duplicates


def _bracket_depth(text: str) -> int:
    """How deep [ and { nest outside quoted strings (a cheap upper bound of the YAML's flow nesting)."""
    unquoted = re.sub(r'"(?:\\.|[^"\\])*"|\'[^\']*\'', "", text)
    depth = deepest = 0
    for char in unquoted:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
