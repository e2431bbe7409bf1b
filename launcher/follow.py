"""Follow a run from byte offsets: train.log lines and events, each exactly once, across reconnects."""

import time
from collections.abc import Callable

from launcher.errors import GpurunError
from launcher.hostcalls import follow_argv, json_object
from launcher.remote import HOST_KEY_KINDS, Remote, SSHFailure, ssh_failure
from launcher.runs import RunRecord

MAX_BACKOFF_S = 30.0
FIRST_CONNECT_TRIES = 3  # before the first successful connection; after it, reconnect forever


def follow(
    remote: Remote,
    record: RunRecord,
    on_log: Callable[[str], None],
    on_events: Callable[[list[dict]], None],
    on_status: Callable[[str], None] = lambda text: None,
    log_offset: int = 0,
    events_offset: int = 0,
) -> dict:
    """Stream until the job ends; returns the final state. Reconnects with backoff when the link drops.

    Only a link that once worked is worth waiting for forever (a rebooting box, a flaky Wi-Fi): a host
    never reached (nothing listening, a name that does not resolve, a refused login) is an error after
    FIRST_CONNECT_TRIES tries, and a refused host key at once, since no retry can fix it.
    """
    backoff = 1.0
    connected = False
    failed_tries = 0
    while True:
        failure = remote.connect()  # the shared connection's master; None without one (then ssh itself tells)
        stderr = ""
        if failure is None:
            proc = remote.stream(follow_argv(remote, record.trainer_root, record.run_id, log_offset, events_offset))
            for line in proc.stdout:
                message = json_object(line)
                if message is None:
                    continue
                backoff = 1.0  # the link works again
                connected = True  # the host's follow answered (it sends a heartbeat first thing)
                if "log" in message:
                    on_log(message["log"])
                    log_offset = message["log_offset"]
                elif "events" in message:
                    on_events(message["events"])
                    events_offset = message["events_offset"]
                elif "status" in message:  # e.g. a Slurm job's wait in the queue
                    on_status(message["status"])
                elif "end" in message:
                    proc.wait()
                    return message["end"]
            stderr = proc.stderr.read() if proc.stderr else ""
            code = proc.wait()
            if code not in (0, 255) and not remote.host.is_local and "No such file" in stderr:
                raise GpurunError(f"run {record.run_id} is gone from {remote.host.name}", stderr.strip()[-200:])
            if code == 255 and not remote.host.is_local:
                failure = ssh_failure(remote.host, stderr)
        if isinstance(failure, SSHFailure) and failure.kind in HOST_KEY_KINDS:
            raise failure
        if not connected and failure is not None:
            failed_tries += 1
            if failed_tries >= FIRST_CONNECT_TRIES:
                raise failure
            on_status(
                f"cannot reach {remote.host.name} (try {failed_tries} of {FIRST_CONNECT_TRIES}); "
                f"retrying in {backoff:.0f}s… (Ctrl-C detaches)"
            )
        else:
            on_status(f"connection to {remote.host.name} lost; reconnecting in {backoff:.0f}s… (Ctrl-C detaches)")
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
