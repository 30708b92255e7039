"""The one exception type users see: a single line saying what was wrong and what would be right."""


class ResAdapterRTError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2."""

    def __init__(self, message: str) -> None:
        if "\n" in message:
            raise ValueError("ResAdapterRTError messages must be one line")
        super().__init__(message)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A library exception's first line (or its type name), for quoting inside a one-line error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
