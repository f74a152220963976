"""The errors that mean "the user gave something wrong", as opposed to a bug in hsrl.

`hsrl VERB` prints a `UserError` (and FileNotFoundError / FileExistsError, which name a path the user
gave) as one line, `hsrl VERB: error: MESSAGE`, and exits 2. Anything else is a bug and keeps its
traceback. `InputError` is also a `ValueError`, so callers that catch bad values keep working.
"""


class UserError(Exception):
    """A mistake in what the user gave: a flag, a file, a folder, a model that does not fit."""


class InputError(UserError, ValueError):
    """A bad value in a flag, a file or a combination of them; the message names the problem."""
