"""What `logs`, `status`, `stop` and `merge` do to a recorded run: on its host, or on each of its nodes."""

from collections.abc import Callable

from launcher.follow import follow
from launcher.hostcalls import merge_run, read_log, stop_run
from launcher.nodes import end_state, node_lines, node_states, nodes_of, stop_all
from launcher.runs import OpenRun, refresh_state
from launcher.sync import push_trainer


def log_now(opened: OpenRun, tail: int | None) -> str:
    """train.log as it is now (its last `tail` lines); the run's state is recorded on the way."""
    record = opened.record
    lines: list[str] = []
    state = read_log(opened.remote, record.trainer_root, record.run_id, lines.append)
    text = "".join(lines)
    if tail is not None:
        text = "\n".join(text.splitlines()[-tail:]) + "\n"
    opened.history.update_state(record.run_id, state)
    return text


def follow_to_end(opened: OpenRun, view, tail: int | None, say: Callable[[str], None]) -> dict:
    """Show the run live in `view` (the dashboard: a context manager with log, events and set_status) until the
    job ends; its end, recorded. Ctrl-C propagates: the caller detaches, the job goes on."""
    record = opened.record
    with view:
        start = -tail if tail is not None else 0
        state = follow(opened.remote, record, view.log, view.events, view.set_status, log_offset=start)
    nodes = nodes_of(opened.root, opened.history, record)
    if nodes:  # several hosts: node 0 was followed; a failure on another node ended the run, and is named
        state = end_state(nodes, record.run_id, state, say)
    opened.history.update_state(record.run_id, state)
    return state


def status(opened: OpenRun) -> tuple[dict, list[str]]:
    """The run's history row as its host reports it now, and one line for each node of a several-host run."""
    record = opened.record
    refresh_state(opened.history, opened.remote, record)
    row = {**opened.history.get(record.run_id).__dict__}
    nodes = nodes_of(opened.root, opened.history, record)
    return row, node_lines(nodes, node_states(nodes, record.run_id)) if nodes else []


def stop(opened: OpenRun, grace: float) -> dict:
    """Stop the run (every node at once; node 0's state is the run's), once the trainer has saved: its state then."""
    record = opened.record
    nodes = nodes_of(opened.root, opened.history, record)
    if nodes:
        state = stop_all(nodes, record.run_id, grace)
    else:
        state = stop_run(opened.remote, record.trainer_root, record.run_id, grace)
    opened.history.update_state(record.run_id, state)
    return state


def merge(opened: OpenRun) -> str:
    """Fold the run's adapter into its base model on the host (output/merged/); the host's last line."""
    trainer_root = push_trainer(opened.remote)  # this launcher's trainer: the run's own may predate merge
    return merge_run(opened.remote, trainer_root, opened.record.run_id)
