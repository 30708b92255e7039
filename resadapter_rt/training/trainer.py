"""The training loop: ``train(TrainOptions(...))`` turns a model and a captioned image folder into a ResAdapter.

Standard latent-diffusion noise-prediction training with the model's own noise schedule (a
``DDPMScheduler`` from its scheduler config; epsilon or v-prediction as that config says), AdamW
(β1 0.95, β2 0.99, weight decay 1e-2) at a constant learning rate, gradient clipping at 1.0.

Data parallel by construction: every rank walks the same batch order (a function of seed and
epoch), so all ranks train the same bucket size in the same step; rank r takes the samples r, r+W,
... of each global batch; each sample's randomness is its own (``encoding.draw``). The loss of a
step is the mean over the step's whole global batch (all micro-batches of gradient accumulation),
each rank back-propagates its share of that sum, and the gradients are summed over the ranks
before clipping and AdamW. So 1 process and N processes take the same steps (up to float
summation order), the trainable set never changes, and every rank ends each step with the same
parameters. Only rank 0 writes the run directory. A resumed run continues bit-identically.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ResAdapterRTError
from ..files import ARTIFACT_MARKER, apply_umask, exclusive_lock
from ..models.families import SDXL
from .accelerator import Accelerator, started
from .checkpoint import checkpoint_dir, read_checkpoint, save_checkpoint
from .data import Sample, epoch_batches, fingerprint, scan_dataset
from .encoding import Encoder, draw
from .options import TrainOptions, TrainResult, check_numbers, check_out, check_world, resolve
from .report import CURVE_FILE, LOG_FILE, VALIDATION_DIR, append_log, plot_loss, save_image
from .trainable import add_trainable_adapter, write_adapter

BETAS = (0.95, 0.99)
WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0
RANDOM_WEIGHTS_NOTE = ("{model} has random weights: the adapter trained on it and its validation images show no learned "
                       "content (a functional check, not a quality one)")


def _model_fingerprint(unet: torch.nn.Module) -> str:
    """A cheap identity of the base UNet (config and a few frozen tensors): a resume refuses another model."""
    digest = hashlib.sha256(repr(sorted(unet.config.items())).encode())
    for name in ("conv_in.weight", "conv_out.weight", "time_embedding.linear_1.weight"):
        digest.update(unet.state_dict()[name].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def random_weights_note(model: str) -> str | None:
    """A note for the built-in random-weight models (``tiny-*``), None for real ones."""
    from ..models.components import TINY_MODELS

    return RANDOM_WEIGHTS_NOTE.format(model=model) if model in TINY_MODELS else None


def _place(network: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``network`` to ``device`` and, for mixed precision, cast it to ``dtype``."""
    network.to(device)
    if dtype != torch.float32:
        network.to(dtype=dtype)


class _Run:
    """One process's part of a training run: models, optimizer, where the run stands."""

    def __init__(self, options: TrainOptions, components: Any, samples: list[Sample], fingerprints: dict[str, str],
                 accelerator: Accelerator) -> None:
        from diffusers import DDPMScheduler

        self.options, self.components, self.samples, self.accelerator = options, components, samples, accelerator
        device, dtype = accelerator.device, accelerator.weight_dtype
        self.unet = components.unet
        self.trainable = add_trainable_adapter(self.unet, options.rank, options.seed)
        # Frozen weights in the low precision, then every trainable tensor (LoRA and norms) back to fp32.
        _place(self.unet, device, dtype)
        for _, parameter in self.trainable:
            parameter.data = parameter.data.float()
        self.unet.train()
        if options.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        # fp16 VAEs overflow (SDXL's notoriously): the VAE stays fp32 under fp16, bf16 otherwise.
        _place(components.vae, device, torch.float32 if accelerator.precision == "fp16" else dtype)
        for network in (components.text_encoder, components.text_encoder_2):
            if network is not None:
                _place(network, device, dtype)
        for network in (components.vae, components.text_encoder, components.text_encoder_2):
            if network is not None:
                network.requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW([p for _, p in self.trainable], lr=options.learning_rate, betas=BETAS,
                                           weight_decay=WEIGHT_DECAY, eps=1e-8)
        self.scaler = accelerator.scaler()
        self.noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
        self.encoder = Encoder(components, device, sdxl=components.family is SDXL, cache=options.cache_latents)
        self.fingerprints = fingerprints  # {"data_fingerprint": ..., "model_fingerprint": ...}
        # Where the run stands: optimisation steps done, epoch, next batch index in it, log so far.
        self.done, self.epoch, self.position, self.history = 0, 0, 0, []

    def state(self) -> dict[str, Any]:
        return {"step": self.done, "epoch": self.epoch, "position": self.position, "options": self.options.trajectory(),
                **self.fingerprints, "history": self.history, "world_size": self.accelerator.world_size,
                "trainable": {name: p.detach().cpu().clone() for name, p in self.trainable},
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

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
        if state.get("scaler") and self.accelerator.precision == "fp16":
            self.scaler.load_state_dict(state["scaler"])
        self.done, self.epoch, self.position, self.history = state["step"], state["epoch"], state["position"], state["history"]

    def _backward(self, indices: list[int], total: int) -> torch.Tensor:
        """Forward and backward of this rank's samples of one micro-batch; returns their share of the step's loss."""
        accelerator, encoder, schedule = self.accelerator, self.encoder, self.noise_scheduler
        device = accelerator.device
        batch = [self.samples[i] for i in indices]
        width, height = batch[0].bucket
        draws = [draw(self.options.seed, self.epoch, i, encoder.latent_shape(width, height),
                      schedule.config.num_train_timesteps) for i in indices]
        mean, std = encoder.moments(batch, [d.flip for d in draws])
        latents = (mean + std * torch.stack([d.eps for d in draws]).to(device)) * self.components.vae.config.scaling_factor
        noise = torch.stack([d.noise for d in draws]).to(device)
        timesteps = torch.tensor([d.timestep for d in draws], device=device)
        noisy = schedule.add_noise(latents, noise, timesteps)
        # v_prediction otherwise (train() refuses any other)
        target = noise if schedule.config.prediction_type == "epsilon" else schedule.get_velocity(latents, noise, timesteps)
        condition = encoder.condition([s.caption for s in batch], width, height)
        with accelerator.autocast():
            prediction = self.unet(noisy, timesteps, **condition).sample
        per_sample = (prediction.float() - target.float()).square().mean(dim=(1, 2, 3))
        loss = per_sample.sum() / total
        self.scaler.scale(loss).backward()
        return loss.detach()

    def step(self, batches: list[list[int]]) -> float:
        """One optimisation step on ``batches`` (one per micro-step, each of one bucket size); returns the step's loss."""
        accelerator = self.accelerator
        total = sum(len(batch) for batch in batches)
        loss = torch.zeros((), device=accelerator.device)
        for batch in batches:
            mine = batch[accelerator.rank::accelerator.world_size]
            if mine:  # a short last batch of a bucket may leave a rank nothing: it still joins the reduction
                loss += self._backward(mine, total)
        parameters = [p for _, p in self.trainable]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters]
                         + [loss.reshape(1)])
        accelerator.all_reduce_sum(flat)
        offset = 0
        for parameter in parameters:
            parameter.grad = flat[offset:offset + parameter.numel()].view_as(parameter).clone()
            offset += parameter.numel()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(flat[-1])

    @torch.no_grad()
    def validate(self, out: Path, epoch: int) -> list[str]:
        """Images at each validation size from the in-memory model; a generator of their own (training RNG untouched)."""
        options = self.options
        scheduler = type(self.components.scheduler).from_config(self.components.scheduler.config)
        pipe = self.components.to_diffusers(scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(options.seed)
        note = random_weights_note(options.model)
        self.unet.eval()
        names = []
        try:
            for width, height in options.validation_sizes:
                with self.accelerator.autocast():
                    image = pipe(options.validation_prompt, width=width, height=height, generator=generator,
                                 num_inference_steps=options.validation_steps).images[0]
                name = f"{VALIDATION_DIR}/epoch-{epoch:03d}-{width}x{height}.png"
                text = {"resadapter-rt": f"validation of {options.model} + the ResAdapter being trained, epoch {epoch}, "
                                         f"step {self.done}, prompt {options.validation_prompt!r}"}
                save_image(image, out / name, {**text, **({"note": note} if note else {})})
                names.append(name)
        finally:
            self.unet.train()
        return names

    def _record(self, out: Path, record: dict[str, Any]) -> None:
        self.history.append(record)
        append_log(out, [record])

    def run_until(self, total: int, out: Path, bar: Any) -> None:
        """Train up to step ``total``: checkpoints every K steps and at the end, validation after each epoch (rank 0 writes)."""
        options, main = self.options, self.accelerator.main
        accumulate = options.gradient_accumulation_steps
        while self.done < total:
            batches = epoch_batches(self.samples, options.batch_size, options.seed, self.epoch)
            while self.position < len(batches) and self.done < total:
                group = batches[self.position:self.position + accumulate]
                began = time.perf_counter()
                loss = self.step(group)
                self.done, self.position = self.done + 1, self.position + len(group)
                if not main:
                    continue
                width, height = self.samples[group[0][0]].bucket
                record = {"event": "step", "step": self.done, "epoch": self.epoch, "loss": loss, "lr": options.learning_rate,
                          "width": width, "height": height, "batch": sum(len(b) for b in group),
                          "seconds": round(time.perf_counter() - began, 4)}
                if accumulate > 1:
                    record["sizes"] = [list(self.samples[b[0]].bucket) for b in group]
                self._record(out, record)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", size=f"{width}x{height}")
                    bar.update(1)
                if options.checkpointing_steps and (self.done % options.checkpointing_steps == 0 or self.done == total):
                    save_checkpoint(checkpoint_dir(out, self.done), self.state(),
                                    lambda tmp: write_adapter(self.unet, tmp, options.format, options.rank))
            if main and options.validation_prompt and (self.position == len(batches) or self.done == total):
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


def prepare(options: TrainOptions, world_size: int = 1,
            main: bool = True) -> tuple[TrainOptions, list[Sample], dict[str, Any] | None, str]:
    """Check everything that can be checked before any file is written.

    Returns the resolved options, the samples, the checkpoint state (or None) and the data fingerprint.
    """
    check_numbers(options)
    checkpoint = read_checkpoint(options.resume) if options.resume is not None else None
    options = resolve(options, checkpoint)
    check_world(options, world_size)
    samples = scan_dataset(options.data, options.rules().check())
    if main:
        check_out(Path(options.out))
    data_id = fingerprint(samples)
    if checkpoint and checkpoint["data_fingerprint"] != data_id:
        raise ResAdapterRTError(f"--resume: {options.data} is not the data the checkpoint was trained on (files, captions "
                                "or sizes changed); resume with the original data")
    return options, samples, checkpoint, data_id


def _load(options: TrainOptions, checkpoint: dict[str, Any] | None) -> tuple[Any, str]:
    """The model's components, checked for training, and the UNet fingerprint."""
    from ..models.components import load_components

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
    return components, model_id


def train(options: TrainOptions, progress: bool = True, notify: Callable[[str], None] = print) -> TrainResult:
    """Train a ResAdapter; rank 0 writes the run directory ``options.out`` (see the package docstring).

    Under ``torchrun``/``accelerate launch`` every process calls this; a bad input found on any rank
    is raised on every rank before anything is written.
    """
    check_numbers(options)  # --device / --mixed-precision before a process group is joined
    with started(options.device, options.mixed_precision, options.allow_tf32) as accelerator:
        return _train(options, accelerator, progress, notify)


def _train(options: TrainOptions, accelerator: Accelerator, progress: bool, notify: Callable[[str], None]) -> TrainResult:
    main, out = accelerator.main, Path(options.out)
    with contextlib.ExitStack() as stack:
        error = None
        try:
            options, samples, checkpoint, data_id = prepare(options, accelerator.world_size, main)
        except Exception as exc:  # every rank learns of it; rank 0 reports it
            error = exc
        accelerator.agree(error)
        # Rank 0 loads (builds, downloads) the model first, the other ranks then read what it left.
        loaded = None
        for turn in (True, False):
            error = None
            if main == turn:
                try:
                    loaded = _load(options, checkpoint)
                except Exception as exc:
                    error = exc
            accelerator.agree(error)
        components, model_id = loaded
        error = None
        try:
            per_epoch = -(-len(epoch_batches(samples, options.batch_size, options.seed, 0)) // options.gradient_accumulation_steps)
            total = options.steps if options.steps is not None else (options.epochs or 1) * per_epoch
            if checkpoint and checkpoint["step"] >= total:
                raise ResAdapterRTError(f"--resume: the checkpoint is at step {checkpoint['step']} and this run stops at step "
                                        f"{total}; pass a larger --steps or --epochs to train further")
            if main:
                out.parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(exclusive_lock(out.parent / f".{out.name}.lock", str(out)))
                check_out(out)
        except Exception as exc:
            error = exc
        accelerator.agree(error)
        if accelerator.device.type == "cpu" and options.allow_tf32 and main:
            notify("note: --allow-tf32 only affects CUDA matmuls and convolutions; it has no effect on the CPU")
        run = _Run(options, components, samples, {"data_fingerprint": data_id, "model_fingerprint": model_id}, accelerator)
        if checkpoint:
            run.restore(checkpoint)
        first = run.done
        if main:
            out.mkdir(exist_ok=True)
            (out / ARTIFACT_MARKER).write_text('{"created_by": "resadapter-rt train"}\n')
            append_log(out, run.history)
        start = time.perf_counter()
        bar = None
        if progress and main:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=run.done, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)
        try:
            run.run_until(total, out, bar)
        finally:
            if bar is not None:
                bar.close()
        if main:
            _write_final_adapter(run.unet, out, options.format, options.rank)
            if not plot_loss(run.history, out / CURVE_FILE):
                notify("note: matplotlib is not installed, so no loss curve was drawn (pip install matplotlib); "
                       f"the losses are in {out / LOG_FILE}")
            apply_umask(out)
    return TrainResult(out=out, steps=run.done, history=run.history, seconds=time.perf_counter() - start, first_step=first)
