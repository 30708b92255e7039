"""Tiny SD1.5 exports with 0, 1 and 2 ControlNets (built once per test session in the test cache), shared by the
runtime and CLI tests. The ControlNets come from ``ControlNetModel.from_unet`` with their zero convs re-initialised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from resadapter_rt.cache import cached_directory
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.models.families import SD15
from resadapter_rt.models.tiny import tiny_controlnet

ALPHA = 0.8


def shared_controlnets() -> list[Path]:
    """Two tiny ControlNet directories (seeds 1 and 2)."""
    def build(directory: Path) -> None:
        for seed in (1, 2):
            tiny_controlnet(SD15, seed).save_pretrained(directory / f"cn{seed}")

    root = cached_directory("tests/controlnets", build)
    return [root / "cn1", root / "cn2"]


def shared_controlnet_exports() -> dict[str, Path]:
    """``plain``, ``one`` and ``two``: baked alpha 0.8, validated at 264x392 (latent 33x49); ``plain`` and ``one``
    with a VAE encoder (image-to-image)."""
    nets = shared_controlnets()

    def build(directory: Path) -> None:
        for key, chosen in (("plain", ()), ("one", nets[:1]), ("two", nets)):
            export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=ALPHA, controlnets=tuple(map(str, chosen)),
                                          validation_sizes=((264, 392, 1),), vae_encoder=key != "two"),
                            directory / key, progress=lambda m: None)

    root = cached_directory("tests/controlnet-exports", build)
    return {key: root / key for key in ("plain", "one", "two")}


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """A random RGB image (of another size than the output, so the resize is exercised)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def shared_sdxl_controlnet_export() -> tuple[Path, Path]:
    """Tiny SDXL with one tiny SDXL ControlNet, dynamic alpha: (export directory, ControlNet directory)."""
    from resadapter_rt.models.families import SDXL

    net = cached_directory("tests/controlnet-sdxl-net", lambda d: tiny_controlnet(SDXL, 3).save_pretrained(d))

    def build(directory: Path) -> None:
        export_pipeline(ExportOptions(model="tiny-sdxl", resadapter="tiny-sdxl", alpha="dynamic", controlnets=(str(net),),
                                      validation_sizes=((264, 392, 1),)), directory, progress=lambda m: None)

    return cached_directory("tests/controlnet-sdxl-export", build), net
