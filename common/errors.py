"""The one exception type for errors a user can cause (bad audio, unknown emotion, bad layer, ...).

Command-line entry points turn it into one line on stderr and exit status 2 (see `common.cli.run_main`).
Anything else that escapes is a bug in modalflip and keeps its traceback.
"""


class ModalflipError(Exception):
    """An error caused by the user's input; the message says what to do about it."""
