"""Safe reading of weight files and atomic writing of artifacts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import ResAdapterRTError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file, turning every failure into a one-line error."""
    if not path.is_file():
        raise ResAdapterRTError(f"{path}: no such file")
    if path.suffix in PICKLE_SUFFIXES:
        raise ResAdapterRTError(
            f"{path}: pickle files can run arbitrary code and are not loaded here; "
            "convert it to .safetensors (safetensors.torch.save_file) and pass that instead"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResAdapterRTError(
            f"{path}: not a readable safetensors file ({reason}); is it truncated or in another format?"
        ) from None


def read_tensor_pickle(path: Path) -> dict[str, torch.Tensor]:
    """Load a tensors-only pickle (``groupnorm_state_dict.pt``) with ``weights_only=True``."""
    if not path.is_file():
        raise ResAdapterRTError(f"{path}: no such file")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResAdapterRTError(
            f"{path}: refused to load: it is not a plain tensor dict readable with weights_only=True ({first})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ResAdapterRTError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    return state


ARTIFACT_MARKER = ".resadapter-rt"  # written into every directory this tool creates; --force replaces only those


def created_by_us(directory: Path) -> bool:
    """Whether ``directory`` is an artifact resadapter-rt wrote (it carries the marker file)."""
    return (Path(directory) / ARTIFACT_MARKER).is_file()


def unwritable_ancestor(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` if it is not a writable directory (``path`` could not be created), else None."""
    for ancestor in Path(path).parents:
        if ancestor.exists():
            return None if ancestor.is_dir() and os.access(ancestor, os.W_OK) else ancestor
    return None


def check_output_dir(final: Path, force: bool = False) -> None:
    """Fail early (before any expensive work) if ``final`` cannot become a fresh output directory.

    ``force`` replaces only a directory this tool created (one carrying the marker file); a user's
    directory is never replaced, whatever the flags.
    """
    final = Path(final)
    resolved = final.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise ResAdapterRTError(f"{final}: is the current directory (or holds it); choose a new directory for --out")
    if final.exists() and not final.is_dir():
        raise ResAdapterRTError(f"{final}: exists and is not a directory; choose another --out")
    if final.is_dir() and any(final.iterdir()):
        if not created_by_us(final):
            raise ResAdapterRTError(
                f"{final}: directory is not empty and was not created by resadapter-rt, so it is left alone; "
                "choose another --out (or empty it yourself)")
        if not force:
            raise ResAdapterRTError(f"{final}: directory is not empty; pass --force to replace it or choose another --out")
    blocked = unwritable_ancestor(final)
    if blocked is not None:
        raise ResAdapterRTError(f"{final}: cannot write here ({blocked} is not a writable directory); choose a writable --out")


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``; a second holder is refused in one line (``wait``: waits its turn).

    The lock file is removed on release; a holder that locked a file already unlinked retries.
    """
    import fcntl

    while True:
        try:
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise ResAdapterRTError(f"{lock_path.parent}: cannot write here ({exc.strerror}); choose a writable location") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ResAdapterRTError(f"{what}: another resadapter-rt process is writing it (lock {lock_path}); "
                                    "wait for it to finish or choose another output") from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        handle.close()


def apply_umask(directory: Path) -> None:
    """Give a finished artifact the modes the umask asks for, throughout.

    ``mkdtemp`` makes 0700 directories and some writers (safetensors) make 0600 files, which a
    service account reading the artifact could not open.
    """
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(directory):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


@contextlib.contextmanager
def atomic_directory(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it replaces ``final`` in one rename.

    While it is open, ``final`` is locked against other resadapter-rt writers (a second one is
    refused). An exception (or Ctrl-C) removes the temporary directory, so a half-written artifact
    is never left where it would be picked up. The result carries the marker file and the
    umask's permissions.
    """
    final = Path(final)
    check_output_dir(final, force)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResAdapterRTError(f"{parent}: cannot write here ({exc.strerror}); choose a writable --out") from None
    with exclusive_lock(parent / f".{final.name}.lock", str(final)):
        check_output_dir(final, force)  # again: another writer may have finished while we were starting
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        try:
            yield tmp
            (tmp / ARTIFACT_MARKER).write_text('{"created_by": "resadapter-rt"}\n')
            apply_umask(tmp)
            if final.exists():
                old = parent / f".{final.name}.old-{os.getpid()}"
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of one file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _external_data_locations(graph) -> set[str]:
    """Every external-data ``location`` referenced by tensors of ``graph`` and its subgraphs."""
    from onnx import AttributeProto, TensorProto

    def locations(tensor) -> set[str]:
        if tensor.data_location != TensorProto.EXTERNAL:
            return set()
        return {entry.value for entry in tensor.external_data if entry.key == "location"}

    found: set[str] = set()
    for tensor in list(graph.initializer) + [s.values for s in graph.sparse_initializer]:
        found |= locations(tensor)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.TENSOR:
                found |= locations(attribute.t)
            found.update(*(locations(t) for t in attribute.tensors))
            if attribute.type == AttributeProto.GRAPH:
                found |= _external_data_locations(attribute.g)
            for subgraph in attribute.graphs:
                found |= _external_data_locations(subgraph)
    return found


def onnx_artifact_sha256(path: Path) -> str:
    """One sha256 for an ONNX artifact: the graph file plus every external data file it references.

    Graphs over 2 GB keep their weights beside them (``model.onnx.data``); hashing only the graph
    would call two exports with different weights identical. A referenced file that is missing, or
    a location outside the graph's directory, is a one-line error.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ResAdapterRTError(f"{path}: no such ONNX file; re-export it (`resadapter-rt export ... --force`)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ResAdapterRTError(f"{path}: not a readable ONNX file ({type(exc).__name__}); re-export it") from None
    digest = hashlib.sha256(f"graph {sha256_file(path)}\n".encode())
    base = path.parent.resolve()
    for location in sorted(_external_data_locations(model.graph)):
        data = (base / location).resolve()
        if base not in data.parents:
            raise ResAdapterRTError(f"{path}: external data location {location!r} leaves {base}; refusing to read it")
        if not data.is_file():
            raise ResAdapterRTError(f"{path}: external data file {location} is missing; re-export it")
        digest.update(f"data {location} {sha256_file(data)}\n".encode())
    return digest.hexdigest()


def read_json_object(path: Path, fix: str) -> dict:
    """A JSON object from ``path`` (a manifest); unreadable JSON or another type is one line ending in ``fix``."""
    import json

    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ResAdapterRTError(f"{path}: not valid JSON; {fix}") from None
    if not isinstance(value, dict):
        raise ResAdapterRTError(f"{path}: expected a JSON object, found {type(value).__name__}; {fix}")
    return value
