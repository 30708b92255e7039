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


def check_output_dir(final: Path, force: bool = False) -> None:
    """Fail early (before any expensive work) if ``final`` cannot become a fresh output directory."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise ResAdapterRTError(f"{final}: exists and is not a directory; choose another --out")
    if final.is_dir() and any(final.iterdir()) and not force:
        raise ResAdapterRTError(f"{final}: directory is not empty; pass --force to replace it or choose another --out")
    for ancestor in final.parents:
        if ancestor.exists():
            if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
                raise ResAdapterRTError(f"{final}: cannot write here ({ancestor} is not a writable directory); choose a writable --out")
            break


@contextlib.contextmanager
def atomic_directory(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it replaces ``final`` in one rename.

    An exception (or Ctrl-C) removes the temporary directory, so a half-written artifact is
    never left where it would be picked up.
    """
    final = Path(final)
    check_output_dir(final, force)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    except OSError as exc:
        raise ResAdapterRTError(f"{parent}: cannot write here ({exc.strerror}); choose a writable --out") from None
    try:
        yield tmp
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
