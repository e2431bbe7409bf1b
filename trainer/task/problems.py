"""How a task reports what is wrong with it: a Problem names the place (file:line and key), the trouble and a hint,
and TaskError carries all of them at once, so the user fixes everything in one go."""

from dataclasses import dataclass


@dataclass
class Problem:
    """One thing wrong with a task, located as precisely as we can."""

    where: str  # "tasks/hr/task.yaml:12" or "tasks/hr/data/train.jsonl:40"
    message: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class TaskError(Exception):
    """Raised with every problem found, so the user fixes them all in one go."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class BadRow(ValueError):
    """What is wrong with one data row, as the user reads it after `file:line: `."""
