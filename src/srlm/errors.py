"""User-facing errors: the CLI prints them as one line, without a traceback."""


class SrlmError(Exception):
    """A problem with the user's input or settings, with a message that says what and where."""
