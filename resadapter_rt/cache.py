"""Where resadapter-rt keeps generated things that are not the user's artifacts (tiny models)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .files import apply_umask


def cache_root() -> Path:
    """``$RESADAPTER_RT_CACHE``, else ``$XDG_CACHE_HOME/resadapter-rt``, else ``~/.cache/resadapter-rt``."""
    if os.environ.get("RESADAPTER_RT_CACHE"):
        return Path(os.environ["RESADAPTER_RT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resadapter-rt"


def cached_directory(relative: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache_root()/relative``, building it with ``build(tmp_dir)`` once, atomically.

    Concurrent builders race harmlessly: the first rename wins, the others discard their copy.
    """
    final = cache_root() / relative
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        apply_umask(tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
