"""The errors that mean "the user gave something wrong", as opposed to a bug in hsrl.

`hsrl VERB` prints a `UserError` (and FileNotFoundError / FileExistsError, which name a path the user
gave) as one line, `hsrl VERB: error: MESSAGE`, and exits 2. Anything else is a bug and keeps its
traceback. `InputError` is also a `ValueError`, so callers that catch bad values keep working.
"""


class UserError(Exception):
    """A mistake in what the user gave: a flag, a file, a folder, a model that does not fit."""


class InputError(UserError, ValueError):
    """A bad value in a flag, a file or a combination of them; the message names the problem."""


# `hsrl` exits with this code when a run stopped on a signal after saving its state (EX_TEMPFAIL, "try again
# later"): a job script requeues on it
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """A run stopped on SIGTERM/SIGINT after saving its state; rerunning the same command resumes it. Not a
    `UserError`: `hsrl` exits with `PREEMPTED_EXIT_CODE`, not 2."""

    exit_code = PREEMPTED_EXIT_CODE
