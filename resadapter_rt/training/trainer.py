"""The training loop: ``train(TrainOptions(...))`` turns a model and a captioned image folder into a ResAdapter.

Standard latent-diffusion noise-prediction training with the model's own noise schedule (a
``DDPMScheduler`` from its scheduler config; epsilon or v-prediction as that config says), AdamW
(β1 0.95, β2 0.99, weight decay 1e-2) at a constant learning rate, gradient clipping at 1.0. All
randomness (flips, VAE sampling, noise, timesteps) comes from one generator whose state is
checkpointed, and the data order is a function of (seed, epoch), so a resumed run continues
bit-identically.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ResAdapterRTError
from ..files import ARTIFACT_MARKER, apply_umask, check_output_dir, exclusive_lock
from ..models.families import SDXL
from .checkpoint import checkpoint_dir, read_checkpoint, save_checkpoint
from .data import Sample, SizeRules, epoch_batches, fingerprint, load_pixels, scan_dataset
from .report import CURVE_FILE, LOG_FILE, VALIDATION_DIR, append_log, plot_loss, save_image
from .trainable import FORMATS, add_trainable_adapter, write_adapter

# Options that shape the trajectory: a resume takes them from the checkpoint and refuses different ones.
TRAJECTORY_DEFAULTS: dict[str, Any] = dict(rank=8, batch_size=4, learning_rate=1e-4, resolution_multiple=64,
                                           min_side=128, max_side=1024, seed=0)
BETAS = (0.95, 0.99)
WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0


@dataclass
class TrainOptions:
    """What ``resadapter-rt train`` takes; ``None`` trajectory options mean the default (or the checkpoint's)."""

    model: str
    data: Path
    out: Path
    rank: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    resolution_multiple: int | None = None
    min_side: int | None = None
    max_side: int | None = None
    seed: int | None = None
    steps: int | None = None
    epochs: int | None = None
    checkpointing_steps: int = 500
    resume: Path | None = None
    validation_prompt: str | None = None
    validation_sizes: list[tuple[int, int]] = field(default_factory=list)
    validation_steps: int = 20
    format: str = "official"
    config: str | None = None

    def trajectory(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in TRAJECTORY_DEFAULTS}

    def rules(self) -> SizeRules:
        return SizeRules(self.resolution_multiple, self.min_side, self.max_side)


@dataclass
class TrainResult:
    out: Path
    steps: int
    history: list[dict[str, Any]]
    seconds: float


def _check_numbers(options: TrainOptions) -> None:
    positive = dict(rank=options.rank, batch_size=options.batch_size, steps=options.steps, epochs=options.epochs,
                    validation_steps=options.validation_steps)
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise ResAdapterRTError(f"--{name.replace('_', '-')} {value} must be a positive integer")
    if options.learning_rate is not None and not (math.isfinite(options.learning_rate) and 0 < options.learning_rate < 1):
        raise ResAdapterRTError(f"--learning-rate {options.learning_rate} is not in (0, 1); use e.g. 1e-4 (paper) or 1e-5")
    if options.checkpointing_steps < 0:
        raise ResAdapterRTError(f"--checkpointing-steps {options.checkpointing_steps} is negative; use 0 for none")
    if options.seed is not None and not 0 <= options.seed < 2**63:
        raise ResAdapterRTError(f"--seed {options.seed} is out of range; use an integer in [0, 2**63)")
    if options.steps is not None and options.epochs is not None:
        raise ResAdapterRTError("--steps and --epochs both given; pass one (training stops at whichever you give)")
    if options.format not in FORMATS:
        raise ResAdapterRTError(f"unknown --format {options.format!r}; choose official (the release layout) or peft "
                                "(the training script's)")
    if options.validation_sizes and not options.validation_prompt:
        raise ResAdapterRTError("--validation-sizes given without --validation-prompt; add the prompt to render")


def _resolve(options: TrainOptions, checkpoint: dict[str, Any] | None) -> TrainOptions:
    """Fill unset trajectory options from the checkpoint (or the defaults); refuse ones that differ from it."""
    saved = checkpoint["options"] if checkpoint else TRAJECTORY_DEFAULTS
    changes = {}
    for key, value in options.trajectory().items():
        if value is not None and checkpoint and value != saved[key]:
            raise ResAdapterRTError(f"--{key.replace('_', '-')} {value} differs from the checkpoint's {saved[key]}; "
                                    "a resumed run must use the options it was started with (leave it out to reuse them)")
        changes[key] = saved[key] if value is None else value
    return replace(options, **changes)


def _check_out(out: Path) -> None:
    """A new run directory: absent or empty (``check_output_dir`` also refuses the current directory)."""
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if out.is_dir() and any(out.iterdir()) and resolved != cwd and resolved not in cwd.parents:
        raise ResAdapterRTError(f"{out}: directory is not empty; training writes a new run directory: choose a new --out "
                                "(to continue a run, pass --resume OUT/checkpoints/checkpoint-N with a new --out)")
    check_output_dir(out)


def _model_fingerprint(unet: torch.nn.Module) -> str:
    """A cheap identity of the base UNet (config and a few frozen tensors): a resume refuses another model."""
    digest = hashlib.sha256(repr(sorted(unet.config.items())).encode())
    for name in ("conv_in.weight", "conv_out.weight", "time_embedding.linear_1.weight"):
        digest.update(unet.state_dict()[name].float().numpy().tobytes())
    return digest.hexdigest()


class _Conditioner:
    """Text (and SDXL size) conditioning for a batch, through diffusers' own ``encode_prompt``."""

    def __init__(self, pipe: Any, sdxl: bool) -> None:
        self.pipe, self.sdxl = pipe, sdxl

    @torch.no_grad()
    def __call__(self, captions: list[str], width: int, height: int) -> dict[str, Any]:
        encoded = self.pipe.encode_prompt(captions, device=torch.device("cpu"), num_images_per_prompt=1,
                                          do_classifier_free_guidance=False)
        if not self.sdxl:
            return {"encoder_hidden_states": encoded[0]}
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * len(captions), dtype=encoded[0].dtype)
        return {"encoder_hidden_states": encoded[0], "added_cond_kwargs": {"text_embeds": encoded[2], "time_ids": time_ids}}


class _Run:
    """One training run's models, optimizer and random state."""

    def __init__(self, options: TrainOptions, components: Any, samples: list[Sample], fingerprints: dict[str, str]) -> None:
        from diffusers import DDPMScheduler

        self.options, self.components, self.samples = options, components, samples
        self.unet = components.unet
        self.trainable = add_trainable_adapter(self.unet, options.rank, options.seed)
        self.unet.train()
        for network in (components.vae, components.text_encoder, components.text_encoder_2):
            if network is not None:
                network.requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW([p for _, p in self.trainable], lr=options.learning_rate, betas=BETAS,
                                           weight_decay=WEIGHT_DECAY, eps=1e-8)
        self.noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
        self.generator = torch.Generator().manual_seed(options.seed)
        self.conditioner = _Conditioner(components.to_diffusers(), sdxl=components.family is SDXL)
        self.fingerprints = fingerprints  # {"data_fingerprint": ..., "model_fingerprint": ...}
        # Where the run stands: optimisation steps done, epoch, next batch index in it, log so far.
        self.done, self.epoch, self.position, self.history = 0, 0, 0, []

    def state(self) -> dict[str, Any]:
        return {"step": self.done, "epoch": self.epoch, "position": self.position, "options": self.options.trajectory(),
                **self.fingerprints, "history": self.history,
                "trainable": {name: p.detach().clone() for name, p in self.trainable},
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        saved = state["trainable"]
        names = [name for name, _ in self.trainable]
        if sorted(saved) != sorted(names):
            raise ResAdapterRTError("--resume: the checkpoint's trainable tensors do not match this model's ResAdapter set; "
                                    "it was written for another model")
        with torch.no_grad():
            for name, parameter in self.trainable:
                parameter.copy_(saved[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.done, self.epoch, self.position, self.history = state["step"], state["epoch"], state["position"], state["history"]

    def step(self, indices: list[int]) -> float:
        """One optimisation step on one same-shape batch; returns the loss."""
        batch = [self.samples[i] for i in indices]
        width, height = batch[0].bucket
        g = self.generator
        flips = (torch.rand(len(batch), generator=g) < 0.5).tolist()
        pixels = load_pixels(batch, flips)
        vae = self.components.vae
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample(generator=g) * vae.config.scaling_factor
        # Contiguous NCHW: torch 2.13's CPU backward through the UNet crashes (SIGSEGV) on channels-last latents.
        latents = latents.contiguous()
        condition = self.conditioner([s.caption for s in batch], width, height)
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(batch),), generator=g)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:  # v_prediction (train() refuses any other)
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        prediction = self.unet(noisy, timesteps, **condition).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable], MAX_GRAD_NORM)
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self, out: Path, epoch: int) -> list[str]:
        """Images at each validation size from the in-memory model; a generator of their own (training RNG untouched)."""
        options = self.options
        scheduler = type(self.components.scheduler).from_config(self.components.scheduler.config)
        pipe = self.components.to_diffusers(scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(options.seed)
        self.unet.eval()
        names = []
        try:
            for width, height in options.validation_sizes:
                image = pipe(options.validation_prompt, width=width, height=height, generator=generator,
                             num_inference_steps=options.validation_steps).images[0]
                name = f"{VALIDATION_DIR}/epoch-{epoch:03d}-{width}x{height}.png"
                save_image(image, out / name)
                names.append(name)
        finally:
            self.unet.train()
        return names

    def _record(self, out: Path, record: dict[str, Any]) -> None:
        self.history.append(record)
        append_log(out, [record])

    def run_until(self, total: int, out: Path, bar: Any) -> None:
        """Train up to step ``total``: checkpoints every K steps and at the end, validation after each epoch."""
        options = self.options
        while self.done < total:
            batches = epoch_batches(self.samples, options.batch_size, options.seed, self.epoch)
            while self.position < len(batches) and self.done < total:
                indices = batches[self.position]
                began = time.perf_counter()
                loss = self.step(indices)
                self.done, self.position = self.done + 1, self.position + 1
                width, height = self.samples[indices[0]].bucket
                self._record(out, {"event": "step", "step": self.done, "epoch": self.epoch, "loss": loss,
                                   "lr": options.learning_rate, "width": width, "height": height, "batch": len(indices),
                                   "seconds": round(time.perf_counter() - began, 4)})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", size=f"{width}x{height}")
                    bar.update(1)
                if options.checkpointing_steps and (self.done % options.checkpointing_steps == 0 or self.done == total):
                    save_checkpoint(checkpoint_dir(out, self.done), self.state(),
                                    lambda tmp: write_adapter(self.unet, tmp, options.format, options.rank))
            if options.validation_prompt and (self.position == len(batches) or self.done == total):
                self._record(out, {"event": "validation", "step": self.done, "epoch": self.epoch,
                                   "images": self.validate(out, self.epoch)})
            if self.position == len(batches):
                self.epoch, self.position = self.epoch + 1, 0


def _write_final_adapter(unet: torch.nn.Module, out: Path, fmt: str, rank: int) -> None:
    """Adapter files into ``out`` through a staging directory: norms renamed first, then the LoRA."""
    staging = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=out))
    try:
        for path in write_adapter(unet, staging, fmt, rank):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare(options: TrainOptions) -> tuple[TrainOptions, list[Sample], dict[str, Any] | None, str]:
    """Check everything that can be checked before any file is written.

    Returns the resolved options, the samples, the checkpoint state (or None) and the data fingerprint.
    """
    _check_numbers(options)
    checkpoint = read_checkpoint(options.resume) if options.resume is not None else None
    options = _resolve(options, checkpoint)
    samples = scan_dataset(options.data, options.rules().check())
    _check_out(Path(options.out))
    data_id = fingerprint(samples)
    if checkpoint and checkpoint["data_fingerprint"] != data_id:
        raise ResAdapterRTError(f"--resume: {options.data} is not the data the checkpoint was trained on (files, captions "
                                "or sizes changed); resume with the original data")
    return options, samples, checkpoint, data_id


def train(options: TrainOptions, progress: bool = True, notify: Callable[[str], None] = print) -> TrainResult:
    """Train a ResAdapter; writes the run directory ``options.out`` (see the package docstring)."""
    from ..models.components import load_components

    options, samples, checkpoint, data_id = prepare(options)
    components = load_components(options.model, config=options.config)
    needed = ["vae", "text_encoder", "tokenizer", "scheduler"]
    needed += ["text_encoder_2", "tokenizer_2"] if components.family is SDXL else []
    missing = [name for name in needed if getattr(components, name) is None]
    if missing:
        raise ResAdapterRTError(f"{options.model}: training needs a whole pipeline, but this model has no {', '.join(missing)}; "
                                "pass the diffusers pipeline directory (or hub id) the UNet belongs to")
    prediction_type = components.scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ResAdapterRTError(f"{options.model}: its scheduler predicts {prediction_type!r}; training supports epsilon "
                                "and v_prediction models")
    model_id = _model_fingerprint(components.unet)
    if checkpoint and checkpoint["model_fingerprint"] != model_id:
        raise ResAdapterRTError(f"--resume: {options.model} is not the model the checkpoint was trained from; "
                                "resume with the original --model")
    fingerprints = {"data_fingerprint": data_id, "model_fingerprint": model_id}
    per_epoch = len(epoch_batches(samples, options.batch_size, options.seed, 0))
    total = options.steps if options.steps is not None else (options.epochs or 1) * per_epoch
    if checkpoint and checkpoint["step"] >= total:
        raise ResAdapterRTError(f"--resume: the checkpoint is at step {checkpoint['step']} and this run stops at step {total}; "
                                "pass a larger --steps or --epochs to train further")
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.lock", str(out)):
        _check_out(out)
        out.mkdir(exist_ok=True)
        (out / ARTIFACT_MARKER).write_text('{"created_by": "resadapter-rt train"}\n')
        run = _Run(options, components, samples, fingerprints)
        if checkpoint:
            run.restore(checkpoint)
        append_log(out, run.history)
        start = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=run.done, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)
        try:
            run.run_until(total, out, bar)
        finally:
            if bar is not None:
                bar.close()
        _write_final_adapter(run.unet, out, options.format, options.rank)
        if not plot_loss(run.history, out / CURVE_FILE):
            notify("note: matplotlib is not installed, so no loss curve was drawn (pip install matplotlib); "
                   f"the losses are in {out / LOG_FILE}")
        apply_umask(out)
    return TrainResult(out=out, steps=run.done, history=run.history, seconds=time.perf_counter() - start)

