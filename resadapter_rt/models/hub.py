"""Resolving user-given model/adapter references: local paths first, then Hugging Face hub ids."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ResAdapterRTError

_HUB_REF = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?$")


def looks_like_hub_reference(reference: str) -> bool:
    """``owner/repo`` or ``owner/repo/subfolder``, not an explicit relative or absolute path."""
    return bool(_HUB_REF.match(reference)) and not reference.startswith((".", "/", "~"))


def download_from_hub(reference: str, patterns: list[str] | None = None) -> Path:
    """Download ``owner/repo[/subfolder]`` into the hub cache and return the local folder."""
    parts = reference.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ResAdapterRTError(f"{reference}: a hub reference is owner/repo[/subfolder] without '.', '..' or empty parts; "
                                "name the subfolder inside the repository directly")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    allow = [f"{subfolder}/{p}" if subfolder else p for p in (patterns or ["*"])]
    try:
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(repo_id, allow_patterns=allow))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ResAdapterRTError(
            f"{reference}: not a local path and could not be downloaded from the Hugging Face hub "
            f"({type(exc).__name__}: {reason}); if you are offline, pass a local directory or file instead"
        ) from None
    folder = root / subfolder if subfolder else root
    if root.resolve() != folder.resolve() and root.resolve() not in folder.resolve().parents:
        raise ResAdapterRTError(f"{reference}: the subfolder leads outside the downloaded repository; refused")
    if not folder.is_dir():
        raise ResAdapterRTError(f"{reference}: the hub repository {repo_id} has no folder {subfolder!r}")
    return folder


def resolve_reference(reference: str | Path, what: str, patterns: list[str] | None = None) -> Path:
    """A local path as is; a hub reference downloaded; anything else a clear error."""
    path = Path(reference).expanduser()
    if path.exists():
        return path
    text = str(reference)
    if looks_like_hub_reference(text):
        return download_from_hub(text, patterns)
    raise ResAdapterRTError(f"{text}: no such file or directory (expected a {what}: local directory, file, or hub id owner/repo[/subfolder])")
