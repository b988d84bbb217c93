"""Errors a user can act on.

Front ends print a `UserError` as one line and exit with its code; anything else is a bug and exits 1.
"""


class UserError(Exception):
    """Bad input or an environment the user can fix (missing file, model too large, ...).

    The message must be one line that says what is wrong and, where possible, what to do.
    """

    exit_code = 2
