"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class EnsError(Exception):
    """An error caused by the user's input (file, key, value); shown as one line, no traceback."""
