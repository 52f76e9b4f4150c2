"""Errors a user can cause. The CLI prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input from the user: a suite, a name, a path, missing data.

    The message must name the file and the key at fault; the CLI prints it
    without a traceback and exits with status 2.
    """


class TaskFailed(Exception):
    """A task failed at run time (NaN loss, an exception inside an attack)."""
