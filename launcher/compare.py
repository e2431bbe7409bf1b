"""`gpurun compare`: runs side by side, from their hosts (one round trip per host): what differs in their resolved
configs, then steps, losses, eval-suite scores, time and peak memory."""

from __future__ import annotations

from pathlib import Path

from launcher.errors import GpurunError
from launcher.hostcalls import fetch_summaries
from launcher.hosts import resolve_host
from launcher.remote import remote_for
from launcher.runs import History, RunRecord


def runs_to_compare(
    history: History, run_ids: tuple[str, ...], task: str | None, last: int, least: int = 2
) -> list[RunRecord]:
    if run_ids:
        records = [history.get(run_id) for run_id in run_ids]
    else:
        records = [r for r in history.all(500) if task is None or r.task == Path(task).name][:last]
        records.reverse()  # oldest first, as they were tried
    if len(records) < least:
        where = f"of task {task} " if task else ""
        raise GpurunError(
            f"{'two runs or more are' if least > 1 else 'a run is'} needed, and {len(records)} {where}were found",
            "name them (RUN RUN ...) or widen --last; gpurun runs lists them",
        )
    return records


def summaries(root: Path, records: list[RunRecord]) -> list[dict]:
    """Each run's summary from its host, in the order given; a host out of reach fails the command (one error).
    Asked of this launcher's trainer (pushed if the host lacks it): a run started by an older one is read too."""
    from launcher.sync import push_trainer

    by_host: dict[str, list[str]] = {}
    for record in records:
        by_host.setdefault(record.host, []).append(record.run_id)
    found: dict[str, dict] = {}
    for host, run_ids in by_host.items():
        remote = remote_for(resolve_host(root, host))
        found.update(fetch_summaries(remote, push_trainer(remote), run_ids))
    out = []
    for record in records:
        summary = found.get(record.run_id, {"state": "not_found"})
        out.append({**summary, "run_id": record.run_id, "host": record.host, "state": record.state})
    return out


def flat(config: dict, prefix: str = "") -> dict:
    """{"training": {"learning_rate": 2e-4}} -> {"training.learning_rate": 2e-4}."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def differing_keys(rows: list[dict]) -> list[str]:
    """The config keys whose values are not the same in every run, in the task file's order."""
    flats = [flat(row.get("config") or {}) for row in rows]
    keys: list[str] = []
    for one in flats:
        keys += [k for k in one if k not in keys]
    return [k for k in keys if len({repr(one.get(k)) for one in flats}) > 1]
