"""The laptop's run history: several gpurun processes opening a brand-new history at once."""

import multiprocessing

from launcher.runs import History, RunRecord


def _open_and_write(root: str, index: int) -> None:
    from pathlib import Path

    history = History(Path(root))
    history.add(RunRecord(f"hr-{index}", "hr", "tasks/hr", "local", "/t", float(index)))


def test_concurrent_first_opens_never_fail(tmp_path):
    # Two `gpurun train`s started together in a fresh project both create the history and switch it to
    # WAL; without the setup lock one of them died with "database is locked" about once in 150 tries here.
    context = multiprocessing.get_context("fork")
    for round_ in range(100):
        root = tmp_path / f"p{round_}"
        root.mkdir()
        (root / "hosts.yaml").write_text("default: local\n")
        workers = [context.Process(target=_open_and_write, args=(str(root), i)) for i in range(6)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert [w.exitcode for w in workers] == [0] * 6, f"round {round_}"
        assert len(History(root).all()) == 6
