"""The base of every error caused by what the user gave (a name, a file, an array, a target).

The CLI turns these into one line on stderr and exit code 2; anything else is a bug.
"""


class UserError(ValueError):
    """Input that pe-port cannot use; the message names the problem."""
