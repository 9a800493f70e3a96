"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class EnsError(Exception):
    """An error caused by the user's input (file, key, value); shown as one line, no traceback."""


def file_problem(path, what: str = "file") -> str | None:
    """Why `path` cannot be read as a `what` ("manifest", "YAML file"): `what` not found, or a folder where
    a file is expected; None when it is a file."""
    if path.is_file():
        return None
    return f"is a folder, expected a {what}" if path.is_dir() else f"{what} not found"
