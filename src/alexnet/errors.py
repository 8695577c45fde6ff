"""The one exception type the command line turns into a single line on stderr."""


class AlexNetError(Exception):
    """A problem the user can fix: bad input, missing data, an unreadable checkpoint.

    The CLI prints ``alexnet: error: <message>`` and exits with status 2; anything
    else that escapes is a bug and is reported as such.
    """
