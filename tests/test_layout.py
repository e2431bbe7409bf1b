"""The house rules of the layout (README "Layout"), as tests that fail when broken.

- trainer/host/, trainer/task/, the shared modules at trainer/'s top and launcher/ import no training library when
  imported alone: the laptop and the host's job control run before the training stack is known to exist.
- No import cycle among the project's modules, counting imports inside functions too.
- No module imports another module's private `_name`.
- No block of six lines or more written twice in launcher/ and trainer/.
- The trainer version that decides when a host gets a fresh copy covers the subfolders.
"""

import ast
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("launcher", "trainer")
HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "accelerate")
# Rooms that must stay light; trainer/training/ and trainer/builtin/ import the stack lazily or at will.
LIGHT_ROOMS = ("launcher", "trainer/host", "trainer/task")
LIGHT_TOP = (
    "trainer/rundir.py",
    "trainer/pushed.py",
    "trainer/checkpoints.py",
    "trainer/sizes.py",
    "trainer/events.py",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def light_modules() -> list[str]:
    paths = [p for room in LIGHT_ROOMS for p in sorted((ROOT / room).rglob("*.py"))]
    paths += [ROOT / name for name in LIGHT_TOP]
    return sorted(module_name(p) for p in paths if p.name != "__main__.py")


def heavy_modules_loaded_by(module: str) -> list[str]:
    code = f"import sys; import {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("module", light_modules())
def test_light_rooms_import_no_training_library(module):
    assert heavy_modules_loaded_by(module) == [], f"{module} pulls in the training stack at import"


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, list[str]]]:
    """(module imported, line, names imported from it) for every import of a project module, at any depth."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            if base.split(".")[0] not in PACKAGES:
                continue
            names = [a.name for a in node.names]
            # `from trainer.task import data` imports the submodule trainer.task.data
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            found += [(sub, node.lineno, []) for sub in subs]
            rest = [n for n in names if f"{base}.{n}" not in modules]
            if rest or not subs:
                found.append((base, node.lineno, rest))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in imports_of(path, modules):
            # A package's __init__ is imported on the way to its submodules; only edges between modules count.
            if target in modules and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_the_projects_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():  # the test above cannot pass by finding nothing ever
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_modules_private_name():
    modules = project_modules()
    private = [
        f"{module_name(path)}:{line} imports {name} from {target}"
        for path in modules.values()
        for target, line, names in imports_of(path, modules)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


NOT_CODE = re.compile(r"^(#|import |from \S+ import|[)\]}:,]+$|\"\"\"|''')")


def code_lines(path: Path) -> list[tuple[int, str]]:
    """The lines that carry code: no blanks, comments, imports or lone brackets; white space folded."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = " ".join(line.split())
        if text and not NOT_CODE.match(text):
            out.append((number, text))
    return out


def duplicated_blocks(paths: list[Path], size: int = 6) -> list[str]:
    seen: dict[str, str] = {}
    found = []
    for path in paths:
        lines = code_lines(path)
        last_reported = -1
        for i in range(len(lines) - size + 1):
            window = lines[i : i + size]
            key = hashlib.sha1("\n".join(text for _, text in window).encode()).hexdigest()
            where = f"{path.relative_to(ROOT)}:{window[0][0]}-{window[-1][0]}"
            if key in seen and i > last_reported:
                found.append(f"{where} repeats {seen[key]}")
                last_reported = i + size - 1  # one report per run of repeated lines
            seen.setdefault(key, where)
    return found


def test_no_block_of_six_lines_is_written_twice():
    paths = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert duplicated_blocks(paths) == []


def test_the_duplicate_finder_finds_a_copied_block(tmp_path):
    body = "\n".join(f"x{i} = compute({i}, 'a')" for i in range(6)) + "\n"
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(body)
    b.write_text("# another file\n" + body)
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert duplicated_blocks([a, b]) == ["b.py:2-7 repeats a.py:1-6"]
    finally:
        ROOT = saved


def test_a_change_in_a_subfolder_of_the_trainer_pushes_a_new_copy(tmp_path, monkeypatch):
    from launcher import sync
    from launcher.hosts import Host
    from launcher.remote import LocalRemote

    source = tmp_path / "src" / "trainer"
    shutil.copytree(ROOT / "trainer", source, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sync, "trainer_source_dir", lambda: source)
    remote = LocalRemote(Host(name="local", transport="local", python=sys.executable, workdir=str(tmp_path / "w")))
    first = Path(sync.push_trainer(remote))
    assert (first / "trainer" / "host" / "__init__.py").is_file()

    with (source / "host" / "__init__.py").open("a") as fh:
        fh.write("# changed\n")
    second = Path(sync.push_trainer(remote))
    assert second != first, "a change under trainer/host/ must give a new trainer version"
    assert (second / "trainer" / "host" / "__init__.py").read_text().endswith("# changed\n")
