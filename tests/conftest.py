"""Shared fixtures: an isolated cache for the tiny models, paths to the real adapters, UNet inputs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from tiers import EXTENDED

# tiers.py's patterns: literal node ids where "*" stands for any text (brackets are literal, unlike fnmatch).
EXTENDED_IDS = re.compile("|".join(re.escape(pattern).replace(r"\*", ".*") for pattern in EXTENDED))

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub; the offline path is what we test
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N processes share the cores, one torch thread each
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESADAPTER_SHARED", REPO.parent / "shared"))
OFFICIAL = SHARED / "resadapter"
OFFICIAL_VARIANTS = sorted(p.name for p in OFFICIAL.glob("resadapter_*") if p.is_dir())


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the tests tiers.py lists as ``extended`` (deselected by default; ``-m extended`` runs them)."""
    for item in items:
        if EXTENDED_IDS.fullmatch(item.nodeid):
            item.add_marker(pytest.mark.extended)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tiny models are built once per test session into a private cache."""
    os.environ["RESADAPTER_RT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


def official(variant: str) -> Path:
    path = OFFICIAL / variant
    if not path.is_dir():
        pytest.skip(f"official adapter {variant} not found under {OFFICIAL}")
    return path


def unet_inputs(unet, batch: int = 1, height: int = 16, width: int = 12, seed: int = 0) -> dict:
    """Deterministic inputs for any SD1.5/SDXL UNet at a latent size."""
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    kwargs = dict(
        sample=torch.randn(batch, cfg.in_channels, height, width, generator=g),
        timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, 7, cfg.cross_attention_dim, generator=g),
    )
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = dict(
            text_embeds=torch.randn(batch, pooled, generator=g),
            time_ids=torch.tensor([[height * 8.0, width * 8.0, 0, 0, height * 8.0, width * 8.0]] * batch),
        )
    return kwargs


def quiet(_message: str) -> None:
    """A progress callback that prints nothing."""


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e|: the parity measure used throughout."""
    return float((actual - expected).abs().max() / expected.abs().max())
