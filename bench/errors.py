"""Errors a user can cause. The CLI prints them and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a suite, a name, a path, missing data.

    Each problem names the file and the key at fault; the CLI prints them without a traceback and exits
    with status 2. A suite with several problems raises one ``UserError`` carrying all of them
    (``problems``), which it renders one per line ("<file>: <key>: <message>" each), so that printing the
    error prints every problem on a line of its own.
    """

    def __init__(self, problems: str | list[str] | tuple[str, ...]):
        self.problems = [problems] if isinstance(problems, str) else [str(p) for p in problems]
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


class TaskFailed(Exception):
    """A task failed at run time (NaN loss, an exception inside an attack)."""
