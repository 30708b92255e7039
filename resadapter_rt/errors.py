"""The one exception type users see: a single line saying what was wrong and what would be right."""


class ResAdapterRTError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2."""

    def __init__(self, message: str) -> None:
        if "\n" in message:
            raise ValueError("ResAdapterRTError messages must be one line")
        super().__init__(message)
