"""Check a task on the laptop with the trainer's own schema and row checks, before anything moves.

Both checks are cached in the user's cache (`~/.cache/gpurun/checked/`, or `$GPURUN_CACHE/checked/`), each by what
shapes its result and nothing else, the way the host caches the tokenized data: a `train` with another learning
rate, step count or experiment that leaves the rows and tokens alone, or a `push` of unchanged data, skips them (and
says so). The keys hold content, not a project, so a second clone of the same task is not checked again either.
Only a clean result is cached: a task with a problem is checked again every time, and refused every time.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import trainer
from launcher.errors import GpurunError
from trainer.task.files import SUFFIXES
from trainer.task.loading import TASK_FILE, config_to_dict, load_task
from trainer.task.problems import Problem, TaskError
from trainer.task.schema import TaskConfig
from trainer.task.splits import load_task_data

CACHE_FORMAT = 1  # bump when what a cache file holds, or what its key hashes, changes
CACHED_LINE = "unchanged since the last check (cached)"
# Never read to key a model folder's tokenizer: weights (the tokenizer and the config are the small files beside them).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".pkl")


@dataclass
class CheckedTask:
    config: TaskConfig
    counts: dict[str, int]
    notices: list[str] = field(default_factory=list)
    rows_cached: bool = False  # the row checks' result came from the check cache (the data did not change)
    report: dict | None = None  # the token checks' report (check_all), None when they ran nowhere here
    tokens_cached: bool = False

    def cached_line(self) -> str | None:
        """One short line saying which checks were skipped because nothing they depend on changed."""
        if self.rows_cached and self.tokens_cached:
            return f"rows and tokens: {CACHED_LINE}"
        if self.rows_cached:
            return f"rows: {CACHED_LINE}"
        if self.tokens_cached:
            return f"tokens: {CACHED_LINE}"
        return None


def check_task(
    task_dir: Path, overrides: tuple[str, ...] = (), experiment: str | None = None, root: Path | None = None
) -> CheckedTask:
    """The config and every data row, checked; raises one GpurunError listing every problem. With the project
    `root`, a clean result is cached by the data files' bytes and the options that read them."""
    notices: list[str] = []
    try:
        config = load_task(task_dir, overrides=overrides, experiment=experiment, notices=notices)
        cache = _cache_file("rows", rows_key(task_dir, config)) if root is not None else None
        hit = _read_cache(cache)
        if hit is not None:
            return CheckedTask(config, hit["counts"], notices + hit["notices"], rows_cached=True)
        config_notices = len(notices)
        splits = load_task_data(task_dir, config, load_hub=False, notices=notices)  # datasets is the trainer's
    except TaskError as exc:
        raise task_error(exc, task_dir) from None
    except OSError as exc:
        raise GpurunError(f"cannot read {exc.filename}: {exc.strerror}", "check the file's permissions") from None
    counts = {name: len(rows) for name, rows in splits.items()}
    _write_cache(cache, {"counts": counts, "notices": notices[config_notices:]})
    return CheckedTask(config, counts, notices)


def check_all(root: Path, task_dir: Path, overrides: tuple[str, ...] = (), experiment: str | None = None):
    """`train`'s checks: the rows, then (where the training stack is installed) the tokens; each cached."""
    checked = check_task(task_dir, overrides, experiment, root=root)
    tokens: dict = {}
    checked.report = token_checks(root, task_dir, overrides, experiment, config=checked.config, cached=tokens)
    checked.tokens_cached = bool(tokens.get("hit"))
    return checked


def task_error(exc: TaskError, task_dir: Path) -> GpurunError:
    problems = exc.problems
    hints = [p.hint for p in problems if p.hint]
    if len(problems) == 1:
        return GpurunError(str(problems[0]), problems[0].hint or default_hint(problems[0]))
    counted = len([p for p in problems if p.where])
    return GpurunError(
        f"{task_dir}: {counted} problems",
        hints[0] if len(set(hints)) == 1 else f"fix them, then check again: gpurun validate {task_dir}",
        details=[str(p) + (f"  ({p.hint})" if p.hint else "") for p in problems],
    )


def warnings_of(checked: CheckedTask, report: dict | None) -> list[str]:
    """What `validate --strict` refuses besides errors: notices (renamed keys, columns no format reads, data read
    as peers read it) and examples that max_length truncates or drops."""
    found = list(checked.notices)
    if report and report.get("truncated"):
        lost = f", {report['lost_trained']} losing trained tokens" if report.get("lost_trained") else ""
        found.append(f"{report['truncated']} example(s) longer than max_length {report['max_length']}{lost}")
    if report and report.get("dropped"):  # every trained token beyond max_length: dropped (data.drop_long)
        found.append(f"{report['dropped']} example(s) dropped: every trained token lies beyond max_length")
    return found


def default_hint(problem: Problem) -> str:
    """For a problem that brought no hint of its own: a data row points at the row shapes, not at task.yaml."""
    if not problem.where.partition(":")[0].lower().endswith(SUFFIXES):
        return f"see README: {TASK_FILE}"
    return "fix that row: the README shows one row of each data format (see README: task.yaml, data)"


def data_paths(config: TaskConfig) -> list[str]:
    """The task's own data files as task.yaml names them (not hub: datasets): what a push must always carry."""
    names = [name for split in ("train", "eval", "test") for name in getattr(config.data, split)]
    if config.eval_suite and config.eval_suite.file:
        names.append(config.eval_suite.file)
    return sorted({name for name in names if not name.startswith("hub:")})


def token_checks(
    root: Path,
    task_dir: Path,
    overrides: tuple[str, ...] = (),
    experiment: str | None = None,
    show: int = 0,
    config: TaskConfig | None = None,
    cached: dict | None = None,
) -> dict | None:
    """Token lengths and loss masks, via `python -m trainer validate` in a subprocess (the launcher
    never imports transformers). None when the training stack is not installed here: the host checks.

    A clean report is cached by what shapes it (tokens_key), not by the whole config: checks of the same
    tokens are not run again (`cached["hit"]` says so), unless `show` asks for previews."""
    import importlib.util
    import subprocess
    import sys

    if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers", "trl")):
        return None
    if config is None:
        try:
            config = load_task(task_dir, overrides=overrides, experiment=experiment)
        except TaskError as exc:
            raise task_error(exc, task_dir) from None
    cache = _cache_file("tokens", tokens_key(task_dir, config))
    hit = None if show else _read_cache(cache)
    if hit is not None:
        if cached is not None:
            cached["hit"] = True
        return hit
    from trainer.pushed import trainer_argv  # this launcher's trainer, never a trainer/ in the project folder

    argv = trainer_argv(sys.executable, "validate", str(task_dir), "--show", str(show))
    for item in overrides:
        argv += ["--set", item]
    if experiment:
        argv += ["--exp", experiment]
    proc = subprocess.run(argv, capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise GpurunError(f"the token checks failed to run: {tail}", "run: python -m trainer validate TASK") from None
    problems = [Problem(p["where"], p["message"], p["hint"]) for p in report["problems"]]
    if problems:
        raise task_error(TaskError(problems), task_dir)
    _write_cache(cache, {k: v for k, v in report.items() if k != "previews"})
    return report


# --- the cache keys: what shapes each check's result, and nothing else --------------------------------------------


class _Key:
    def __init__(self, kind: str):
        self.digest = hashlib.sha256()
        self.part("kind", f"{kind} {CACHE_FORMAT}")

    def part(self, name: str, value: bytes | str) -> None:
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        self.digest.update(f"{name}\0{len(raw)}\0".encode())  # length-prefixed: no two inputs hash alike by shifting
        self.digest.update(raw)

    def sources(self, paths: list[Path]) -> None:
        for path in paths:
            self.part(path.name, path.read_bytes())

    def files(self, task_dir: Path, names: list[str]) -> None:
        for name in names:
            self.part("file", name)
            self.part("bytes", _file_digest(task_dir / name))

    def hexdigest(self) -> str:
        return self.digest.hexdigest()[:32]


def _trainer_dir() -> Path:
    return Path(trainer.__file__).resolve().parent  # this launcher's trainer: the one its checks run


def _task_sources() -> list[Path]:
    """The code that reads and checks rows: every module of trainer/task/ (a fixed bug is never served from cache)."""
    return sorted((_trainer_dir() / "task").glob("*.py"))


def rows_key(task_dir: Path, config: TaskConfig) -> str:
    """What the row checks' result depends on: the data files' bytes, the data options, the task kind, the eval
    suite's file and fields, and the code that reads them. Not the training settings, the model or the experiment."""
    key = _Key("rows")
    key.sources(_task_sources())
    key.part("task_dir", str(task_dir))  # as typed: the notices and problems name files by it
    key.part("task", config.task)
    key.part("data", json.dumps(config_to_dict(config)["data"], sort_keys=True, ensure_ascii=False, default=str))
    suite = config.eval_suite
    fields = [suite.file, suite.expected_field, suite.json_field] if suite else None
    key.part("eval_suite", json.dumps(fields))
    key.files(task_dir, data_paths(config))
    return key.hexdigest()


def tokens_key(task_dir: Path, config: TaskConfig) -> str:
    """What the token checks' result depends on: the rows (as rows_key), the tokenizer and its templates, the task
    kind, max_length, packing and padding_free, lora.target_modules (checked against the model's modules), the
    library versions that tokenize, and the code that checks (trainer/task/, tokens, validate, model)."""
    from importlib import metadata

    key = _Key("tokens")
    training = _trainer_dir() / "training"
    key.sources([*_task_sources(), training / "tokens.py", training / "validate.py", training / "model.py"])
    versions = []
    for name in ("transformers", "tokenizers", "trl", "torch", "jinja2"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} -")
    key.part("versions", ", ".join(versions))
    t = config.training
    lora = config.lora.target_modules if config.lora is not None else None
    options = {
        "task": config.task,
        "max_length": t.max_length,
        "packing": t.packing,
        "padding_free": t.padding_free,
        "target_modules": lora,
    }
    key.part("options", json.dumps(options, sort_keys=True, default=str))
    key.part("rows", rows_key(task_dir, config))
    key.part("base_model", config.base_model)
    key.part("tokenizer", _tokenizer_fingerprint(config.base_model))
    return key.hexdigest()


def _tokenizer_fingerprint(base_model: str) -> bytes:
    """The tokenizer as this machine has it, without loading it: builtin:tiny is built from trainer/builtin/
    (its sources and shipped files); a local folder by its files' bytes (tokenizer, templates, config; not the
    weights); a hub id by the revision the Hugging Face cache here holds of it (none: the host checks it)."""
    from trainer.builtin.tiny import is_builtin

    if is_builtin(base_model):
        return _folder_digest(_trainer_dir() / "builtin")
    folder = Path(base_model).expanduser()
    try:
        if folder.is_dir():
            return _folder_digest(folder)
    except (OSError, RuntimeError):  # a name too long for a path, a ~user that does not exist: a hub id
        pass
    home = Path(os.environ.get("HF_HOME") or _xdg_cache() / "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or home / "hub")
    refs = hub / ("models--" + base_model.replace("/", "--")) / "refs"
    digest = hashlib.sha256()
    try:
        for ref in sorted(p for p in refs.rglob("*") if p.is_file()):
            digest.update(ref.relative_to(refs).as_posix().encode() + b"\0" + ref.read_bytes() + b"\0")
    except OSError:
        pass
    return digest.digest()


def _xdg_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _folder_digest(folder: Path) -> bytes:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if "__pycache__" in path.parts or path.suffix.lower() in WEIGHT_SUFFIXES or not path.is_file():
            continue
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + _file_digest(path))
    return digest.digest()


def _file_digest(path: Path) -> bytes:
    """sha256 of the file's bytes (b"missing" when it cannot be read: the check then says what is wrong)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except OSError:
        return b"missing"
    return digest.digest()


# --- the cache files ----------------------------------------------------------------------------------------------


def _cache_file(kind: str, key: str) -> Path:
    """One cache for every project on this machine (the key is content): $GPURUN_CACHE/checked, where the builtin
    model's cache also lives when it is set, else ~/.cache/gpurun/checked."""
    base = Path(os.environ["GPURUN_CACHE"]) if os.environ.get("GPURUN_CACHE") else _xdg_cache() / "gpurun"
    return base / "checked" / f"{kind}-{key}.json"


def _read_cache(path: Path | None) -> dict | None:
    """The cached result, or None when there is none or it is unreadable (a corrupt file is checked again)."""
    if path is None:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_cache(path: Path | None, value: dict) -> None:
    """Written whole to a temporary file and renamed into place; a failure to cache costs a check next time only."""
    if path is None:
        return
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        os.replace(staging, path)
    except OSError:
        staging.unlink(missing_ok=True)
