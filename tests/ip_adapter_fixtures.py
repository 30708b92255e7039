"""Tiny IP-Adapters in h94's layout (plain, full-face; SD1.5 and SDXL) and exports with them, built once per test
session in the test cache and shared by the runtime, CLI and engine tests."""

from __future__ import annotations

from pathlib import Path

from resadapter_rt.cache import cached_directory
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.models.families import SD15, SDXL, ModelFamily
from resadapter_rt.models.tiny import write_tiny_ip_adapters

ALPHA = 0.8  # as the ControlNet fixtures: their plain export is this model without an IP-Adapter
SIZE = (264, 392, 1)  # validation size: non-square, latent 33x49
BAKED_SCALES = (0.3, 0.6, 1.0)


def shared_ip_adapters(family: ModelFamily) -> dict[str, Path]:
    """``plain``, ``plain-bin``, ``full-face`` and ``plus`` files, each with ``image_encoder/`` beside it."""
    root = cached_directory(f"tests/ip-adapters-{family.name}", lambda d: write_tiny_ip_adapters(family, d))
    folder = root / "models"
    return {"plain": folder / f"ip-adapter_{family.name}.safetensors", "plain-bin": folder / f"ip-adapter_{family.name}.bin",
            "full-face": folder / f"ip-adapter-full-face_{family.name}.safetensors",
            "plus": folder / f"ip-adapter-plus_{family.name}.safetensors"}


def _export(directory: Path, family: ModelFamily, variant: str, alpha=ALPHA, scale="dynamic", controlnets=(),
            vae_encoder=True) -> None:
    export_pipeline(ExportOptions(model=f"tiny-{family.name}", resadapter=f"tiny-{family.name}", alpha=alpha,
                                  ip_adapter=str(shared_ip_adapters(family)[variant]), ip_adapter_scale=scale,
                                  controlnets=tuple(map(str, controlnets)), vae_encoder=vae_encoder,
                                  validation_sizes=(SIZE,)), directory, progress=lambda m: None)


def shared_ip_exports() -> dict[str, Path]:
    """Baked alpha 0.8, dynamic IP-Adapter scale: ``sd15-plain``, ``sd15-full-face``, ``sdxl-plain`` with a VAE
    encoder, ``sd15-plus`` without."""
    def build(directory: Path) -> None:
        _export(directory / "sd15-plain", SD15, "plain")
        _export(directory / "sd15-full-face", SD15, "full-face")
        _export(directory / "sd15-plus", SD15, "plus", vae_encoder=False)
        _export(directory / "sdxl-plain", SDXL, "plain")

    root = cached_directory("tests/ip-adapter-exports", build)
    return {key: root / key for key in ("sd15-plain", "sd15-full-face", "sd15-plus", "sdxl-plain")}


def shared_baked_scale_exports() -> dict[float, Path]:
    """SD1.5 plain IP-Adapter exports with the scale baked at 0.3, 0.6 and 1.0 (no VAE encoder)."""
    def build(directory: Path) -> None:
        for scale in BAKED_SCALES:
            _export(directory / f"scale-{scale}", SD15, "plain", scale=scale, vae_encoder=False)

    root = cached_directory("tests/ip-adapter-baked-exports", build)
    return {scale: root / f"scale-{scale}" for scale in BAKED_SCALES}


def shared_ip_controlnet_export(controlnet: Path) -> Path:
    """SD1.5 with dynamic alpha, one ControlNet and the plain IP-Adapter with a dynamic scale."""
    return cached_directory("tests/ip-adapter-controlnet-export",
                            lambda d: _export(d, SD15, "plain", alpha="dynamic", controlnets=(controlnet,), vae_encoder=False))
