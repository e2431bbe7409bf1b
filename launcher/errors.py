"""One user-facing error type: a message, a hint, an exit code. A traceback is a bug."""

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2
# `logs -f` ends with the job's own exit code; these mark endings that have none.
EXIT_STOPPED = 130  # stopped with `gpurun stop` (as for Ctrl-C)
EXIT_LOST = 125  # the job vanished without an exit code (host rebooted, wrapper killed)


class GpurunError(Exception):
    def __init__(self, message: str, hint: str = "", exit_code: int = EXIT_USER, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        self.details = details or []
