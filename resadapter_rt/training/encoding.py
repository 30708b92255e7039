"""Per-sample randomness and the frozen encoders' outputs (VAE latent moments, text conditioning), optionally cached.

Every random number a training sample uses (its flip, timestep, VAE sampling noise and diffusion
noise) comes from its own generator seeded by (seed, epoch, dataset index). A sample is seen once
per epoch, so that key is unique, and it does not depend on the batch size, the number of
processes, which rank holds the sample, gradient accumulation or the device: the same global batch
gives the same update however it is split. With ``cache`` the VAE's latent distribution (mean and
std) is computed once per image, bucket and flip, keyed by a sha256 of the image bytes, the bucket
and the flip, and the text encoders' outputs once per caption (keyed by the caption), and both are
kept in host memory for the rest of the run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from .data import Sample, load_pixels


@dataclass(frozen=True)
class Draw:
    """The random numbers of one sample in one epoch."""

    flip: bool
    timestep: int
    eps: torch.Tensor  # VAE sampling noise, latent shape
    noise: torch.Tensor  # diffusion noise, latent shape


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` in ``epoch``."""
    digest = hashlib.sha256(f"resadapter-rt train {seed} {epoch} {index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def draw(seed: int, epoch: int, index: int, latent_shape: tuple[int, ...], num_timesteps: int) -> Draw:
    """The sample's flip, timestep and noises from its own CPU generator (device independent)."""
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, index))
    flip = bool(torch.rand((), generator=generator) < 0.5)
    timestep = int(torch.randint(0, num_timesteps, (), generator=generator))
    eps = torch.randn(latent_shape, generator=generator)
    noise = torch.randn(latent_shape, generator=generator)
    return Draw(flip, timestep, eps, noise)


class Encoder:
    """Latent moments of pixel batches and text conditioning of caption batches, on ``device``."""

    def __init__(self, components: Any, device: torch.device, sdxl: bool, cache: bool) -> None:
        self.vae, self.device, self.sdxl, self.cache = components.vae, device, sdxl, cache
        self.pipe = components.to_diffusers()
        self._latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._texts: dict[str, tuple[torch.Tensor, ...]] = {}
        self._file_digests: dict[str, str] = {}
        self.encoded_images = 0  # how many images went through the VAE (the cache's effect, for tests and logs)

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.vae.config.latent_channels, height // factor, width // factor

    def _key(self, sample: Sample, flip: bool) -> str:
        path = str(sample.path)
        if path not in self._file_digests:
            self._file_digests[path] = hashlib.sha256(sample.path.read_bytes()).hexdigest()
        return hashlib.sha256(f"{self._file_digests[path]} {sample.bucket} {flip}".encode()).hexdigest()

    @torch.no_grad()
    def _encode(self, samples: list[Sample], flips: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = load_pixels(samples, flips).to(self.device, self.vae.dtype)
        distribution = self.vae.encode(pixels).latent_dist
        self.encoded_images += len(samples)
        # Contiguous NCHW: torch 2.13's CPU backward through the UNet crashes (SIGSEGV) on channels-last latents.
        return distribution.mean.float().contiguous(), distribution.std.float().contiguous()

    def moments(self, samples: list[Sample], flips: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the VAE latent distribution of each image (resized to its bucket, flipped if asked), fp32."""
        if not self.cache:
            return self._encode(samples, flips)
        keys = [self._key(s, f) for s, f in zip(samples, flips)]
        todo = [i for i, key in enumerate(keys) if key not in self._latents]
        todo = [i for n, i in enumerate(todo) if keys[i] not in {keys[j] for j in todo[:n]}]  # a duplicate once
        if todo:
            mean, std = self._encode([samples[i] for i in todo], [flips[i] for i in todo])
            for row, i in enumerate(todo):
                self._latents[keys[i]] = (mean[row].cpu(), std[row].cpu())
        pairs = [self._latents[key] for key in keys]
        return (torch.stack([m for m, _ in pairs]).to(self.device), torch.stack([s for _, s in pairs]).to(self.device))

    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> tuple[torch.Tensor, ...]:
        encoded = self.pipe.encode_prompt(captions, device=self.device, num_images_per_prompt=1,
                                          do_classifier_free_guidance=False)
        return (encoded[0], encoded[2]) if self.sdxl else (encoded[0],)

    def _texts_of(self, captions: list[str]) -> tuple[torch.Tensor, ...]:
        if not self.cache:
            return self._encode_text(captions)
        todo = list(dict.fromkeys(c for c in captions if c not in self._texts))
        if todo:
            encoded = self._encode_text(todo)
            for row, caption in enumerate(todo):
                self._texts[caption] = tuple(t[row].cpu() for t in encoded)
        parts = [self._texts[c] for c in captions]
        return tuple(torch.stack([p[k] for p in parts]).to(self.device) for k in range(len(parts[0])))

    def condition(self, captions: list[str], width: int, height: int) -> dict[str, Any]:
        """The UNet's conditioning keywords: text embeddings (and SDXL's pooled embeddings and size time ids)."""
        texts = self._texts_of(captions)
        if not self.sdxl:
            return {"encoder_hidden_states": texts[0]}
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * len(captions), dtype=texts[0].dtype,
                                device=self.device)
        return {"encoder_hidden_states": texts[0], "added_cond_kwargs": {"text_embeds": texts[1], "time_ids": time_ids}}
