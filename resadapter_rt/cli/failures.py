"""How the CLI turns failures into one ``error:`` line and an exit status."""

from __future__ import annotations

import argparse
import errno
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes as one ``error:`` line (exit 2) naming the help to read, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def os_error_line(exc: OSError) -> str:
    """One line for a failed file operation: which file, what the system said, what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    hint = {errno.ENOSPC: "free disk space or write elsewhere", errno.EFBIG: "free disk space or write elsewhere",
            errno.EDQUOT: "free disk space or write elsewhere", errno.EACCES: "check the permissions",
            errno.EROFS: "write to another location"}.get(exc.errno, "check the path and try again")
    return f"{where}{exc.strerror or exc} ({hint})"


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``, if a library wrapped one (e.g. a write failing inside an exporter)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
