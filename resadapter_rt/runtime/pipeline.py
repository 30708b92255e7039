"""``ResAdapterPipeline``: prompt in, images out, over any backend's runners (diffusers-shaped API)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from .alpha_policy import auto_alpha
from .controlnet import ControlRequest, control_request, control_static_inputs, control_step_inputs
from .img2img import VAE_ENCODER, InitImage, image_to_image_start, init_image_request
from .inpaint import blend_unmasked, draw_masked_image_sample, latent_mask, mask_request
from .ip_adapter import ImagePrompt, image_prompt_inputs, image_prompt_request, load_feature_extractor
from ..errors import ResAdapterRTError
from ..export.exporter import check_export_files, read_manifest
from ..export.specs import ALPHA_INPUT, penultimate_hidden_state
from ..engines.profiles import FAMILY_PIXEL_RANGE
from .openvino_runners import check_cpu_precision_for
from .runners import Runner, check_backend, onnxruntime_runners, torch_runners
from .prompts import SEQUENCE, chunked_token_ids, chunks_needed, encode_chunks
from .prompt_weighting import DEFAULT_SYNTAX, check_prompts
from .schedulers import DEFAULT_SCHEDULER, make_scheduler
from .tiling import TiledUNet, TilePlan, tile_hint, tile_plan
from .vae_tiling import decode as vae_decode, vae_runner

SEED_RANGE = (-(2**63), 2**64 - 1)


@dataclass
class Timings:
    """Seconds per stage; ``host_overhead`` is the loop time outside UNet calls."""

    text_encoding: float = 0.0
    unet_steps: list[float] = field(default_factory=list)
    host_overhead: float = 0.0
    decode: float = 0.0
    total: float = 0.0

    @property
    def host_overhead_per_step_ms(self) -> float:
        return 1e3 * self.host_overhead / max(len(self.unet_steps), 1)

    def summary(self) -> str:
        steps = self.unet_steps
        return (f"text {self.text_encoding * 1e3:.0f} ms | UNet {len(steps)} steps, {np.median(steps) * 1e3:.1f} ms median | "
                f"host {self.host_overhead_per_step_ms:.2f} ms/step | decode {self.decode * 1e3:.0f} ms | total {self.total:.2f} s")


@dataclass
class GenerationOutput:
    images: list[Image.Image]
    latents: torch.Tensor  # final latents, before decoding
    alpha: float
    timings: Timings
    parameters: dict


@dataclass
class GenerationRequest:
    """A checked request with everything resolved: the prompt batch, alpha and the random generator."""

    prompts: list[str]  # one entry per image
    negatives: list[str] | None
    height: int
    width: int
    steps: int
    guidance_scale: float
    alpha: float
    scheduler: str
    seed: int | None
    generator: torch.Generator | list[torch.Generator]  # a list: one per image (``resadapter_rt.serve`` batches requests)
    noise_scheduler: Any  # a fresh diffusers scheduler (stateful: one per call)
    control: ControlRequest | None = None  # ControlNet images and scales (exports with ControlNets)
    init_image: InitImage | None = None  # image-to-image source (exports with a VAE encoder), with an inpainting mask
    image_prompt: ImagePrompt | None = None  # IP-Adapter embeddings and scale (exports with an IP-Adapter)
    prompt_weighting: str = DEFAULT_SYNTAX  # a1111 | compel | none (``prompt_weighting.py``)
    tiling: TilePlan | None = None  # MultiDiffusion windows beyond the engines' sizes (``tiling.py``)
    vae_tiling: bool | None = None  # None: tiled VAE only beyond what the VAE covers (``vae_tiling.py``)

    @property
    def circular(self) -> bool:
        """Whether the canvas wraps around its width (tiling's ``circular``): decoded with wrapped padding."""
        return bool(self.tiling and self.tiling.circular)

    @property
    def cfg(self) -> bool:
        """Classifier-free guidance runs only above a scale of 1."""
        return self.guidance_scale > 1.0


@dataclass
class Conditioning:
    """What the UNet is conditioned on: text embeddings ([negative..., positive...] with CFG), SDXL pooled."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None


class ResAdapterPipeline:
    """Runs an export directory's networks with a diffusers scheduler loop.

    Thread safety: each call builds its own scheduler and tensors; runners are stateless
    (ONNX Runtime sessions and inference-mode torch modules may be called concurrently), so
    concurrent calls from several threads are safe.
    """

    def __init__(self, directory: Path, manifest: dict, runners: dict[str, Runner], backend: str) -> None:
        from transformers import CLIPTokenizer

        self.directory, self.manifest, self.runners, self.backend = directory, manifest, runners, backend
        self.family = manifest["family"]
        self.sdxl = self.family == "sdxl"
        missing = {"unet", "text_encoder", "vae_decoder"} - set(runners)
        if missing:
            raise ResAdapterRTError(f"{directory}: export has no {sorted(missing)[0]}; generation needs a whole pipeline export")
        self.tokenizers = [CLIPTokenizer.from_pretrained(directory / name) for name in ("tokenizer", "tokenizer_2") if (directory / name).is_dir()]
        self.scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
        self.unet_inputs = runners["unet"].input_names
        # SDXL conditions on each encoder's penultimate hidden state
        self.penultimate = [penultimate_hidden_state(o["name"] for o in manifest["components"][name]["outputs"])
                            for name in ("text_encoder", "text_encoder_2")] if self.sdxl else []
        self.profiles = None  # engine profiles (TensorRT backends); None: the export's per-side range
        self.fused_group_norm_pairs = 0  # GroupNorm -> SiLU pairs running as one fused kernel (torch backend)
        self.device = "cuda" if backend == "tensorrt" else "cpu"
        self.cpu_precision: str | None = None  # openvino backend: "requested -> chosen", e.g. "auto -> bf16"
        self.precisions: dict[str, str] | None = None  # openvino backend: each component's compute precision
        self.feature_extractor = load_feature_extractor(directory) if manifest.get("ip_adapter") else None

    @classmethod
    def from_artifacts(cls, directory: str | Path, backend: str = "onnxruntime",
                       fused_group_norm: bool | None = None, cpu_precision: str | None = None) -> "ResAdapterPipeline":
        """An export directory, or an engine directory from ``resadapter-rt build`` (its export is in ``onnx/``).

        ``fused_group_norm`` applies to the torch backend (default: on with CUDA and Triton);
        ``cpu_precision`` (fp32 | bf16 | auto, default auto) to the openvino backend.
        """
        from ..engines.profiles import ResolutionProfile, preset_for
        from .runners import onnxruntime_tensorrt_runners, tensorrt_runners, torch_device

        directory = Path(directory)
        if not directory.is_dir():
            raise ResAdapterRTError(f"{directory}: no such artifacts directory; create it with `resadapter-rt export --out {directory} ...`")
        check_backend(backend)
        check_cpu_precision_for(backend, cpu_precision)
        export_dir = directory / "onnx" if (directory / "onnx").is_dir() else directory
        manifest = read_manifest(export_dir)
        check_export_files(export_dir, manifest)
        profiles, fused = None, 0
        if backend == "onnxruntime":
            runners = onnxruntime_runners(export_dir, manifest)
        elif backend == "torch":
            runners, fused = torch_runners(manifest, export_dir, fused_group_norm)
        elif backend == "openvino":
            from .openvino_runners import openvino_runners

            runners, resolved = openvino_runners(export_dir, manifest, cpu_precision or "auto")
        else:
            engine_manifest = directory / "manifest.json"
            specs = json.loads(engine_manifest.read_text()).get("profiles", []) if engine_manifest.is_file() and export_dir != directory else []
            profiles = [ResolutionProfile.parse(p["spec"]) for p in specs] or [preset_for(manifest["sources"]["resadapter"]["source"], manifest["family"])]
            runners = tensorrt_runners(directory) if backend == "tensorrt" else \
                onnxruntime_tensorrt_runners(export_dir, manifest, profiles, directory / "ort_trt_cache")
        pipe = cls(export_dir, manifest, runners, backend)
        pipe.profiles, pipe.fused_group_norm_pairs = profiles, fused
        if backend == "openvino":
            pipe.cpu_precision = f"{cpu_precision or 'auto'} -> {resolved}"
            pipe.precisions = {name: runner.precision for name, runner in runners.items()}
        if backend == "torch":
            pipe.device = torch_device()
        return pipe

    # -- checks -------------------------------------------------------------------------------
    def covered_range(self) -> tuple[int, int]:
        """Pixels per side an export serves (every multiple of 8 inside): the model's declared range, else its
        family's model-card range."""
        return tuple(self.manifest.get("pixel_range") or FAMILY_PIXEL_RANGE[self.family])

    def _check_request(self, prompt, height, width, steps, guidance, images_per_prompt, tiled: bool = False) -> None:
        """``tiled``: the UNet sees tiles, checked by ``tiling.tile_plan``, so any canvas size is allowed."""
        low, high = self.covered_range()
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value % 8:
                hint = min(max(int(value) // 8 * 8, -(-low // 8) * 8), high // 8 * 8)  # a multiple of 8 the model covers
                raise ResAdapterRTError(f"{name} {value} is not a multiple of 8 px; use e.g. {hint}")
            if self.profiles is None and not tiled and not low <= value <= high:
                raise ResAdapterRTError(
                    f"{name} {value} px is outside what {self.directory} covers ({low}-{high} px per side, every multiple of 8); "
                    f"choose a size in that range, or export a model whose adapter covers it"
                    + (f", or generate it in tiles: {tile_hint(self)}" if value > high else "")
                )
        batch = (1 if isinstance(prompt, str) else len(prompt or [])) * images_per_prompt
        if self.profiles is not None and not tiled and not any(p.covers(width, height, batch) for p in self.profiles):
            listed = "; ".join(p.describe() for p in self.profiles)
            raise ResAdapterRTError(
                f"{width}x{height} (batch {batch}) is not covered by the engine profiles ({listed}); build one that covers it, "
                f"e.g. `resadapter-rt build ... --profile {min(width, height)}-{max(width, height)},opt={width}x{height} "
                f"--profile <existing specs>`" + (f", or generate it in tiles: {tile_hint(self)}"
                                                  if max(width, height) > max(p.max_px for p in self.profiles) else ""))
        if not isinstance(steps, int) or steps <= 0:
            raise ResAdapterRTError(f"steps must be a positive integer, got {steps!r}")
        if not np.isfinite(guidance) or guidance < 0:
            raise ResAdapterRTError(f"guidance scale must be >= 0, got {guidance!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ResAdapterRTError("prompt is empty; pass the text to generate from")
        if images_per_prompt < 1:
            raise ResAdapterRTError(f"num_images_per_prompt must be >= 1, got {images_per_prompt}")

    def _check_tokens(self, tokens: int) -> None:
        """Engine profiles fix the token range: a longer prompt needs a profile that covers it."""
        if self.profiles is not None and not any(p.tokens[0] <= tokens <= p.tokens[2] for p in self.profiles):
            covered = ", ".join(f"{p.tokens[0]}-{p.tokens[2]}" for p in self.profiles)
            raise ResAdapterRTError(
                f"the prompt needs {tokens} tokens ({tokens // SEQUENCE} chunks of 75) but the engine profiles cover {covered}; "
                f"rebuild with e.g. `--profile <spec>,tokens=77-{tokens}`, or shorten the prompt")

    @staticmethod
    def check_seed(seed: int | None) -> None:
        """torch generators take seeds in [-2**63, 2**64 - 1]."""
        if seed is not None and (not isinstance(seed, int) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
            raise ResAdapterRTError(f"seed {seed} is out of range; use an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}")

    @staticmethod
    def _check_steps(noise_scheduler: Any, name: str, steps: int) -> None:
        """Schedulers cap the step count (training timesteps; LCM: its original inference steps)."""
        limit = noise_scheduler.config.num_train_timesteps
        if type(noise_scheduler).__name__ == "LCMScheduler":
            limit = min(limit, noise_scheduler.config.original_inference_steps)
        if steps > limit:
            raise ResAdapterRTError(f"{steps} steps is more than the {name} scheduler supports here (at most {limit}); "
                                    f"use --steps {limit} or fewer")

    def resolve_alpha(self, requested, width: int, height: int) -> float:
        """The alpha used: baked exports report theirs; dynamic ones take a number or ``"auto"``."""
        if self.manifest["alpha_mode"] == "baked":
            baked = float(self.manifest["alpha"])
            if requested not in (None, "auto") and abs(float(requested) - baked) > 1e-9:
                raise ResAdapterRTError(
                    f"this export has alpha baked at {baked:g}; re-export with --alpha dynamic to choose alpha per request")
            return baked
        if requested in (None, "auto"):
            return auto_alpha(width, height, self.manifest["training_size"])
        from ..models.merge import parse_alpha

        return parse_alpha(requested)

    # -- stages -------------------------------------------------------------------------------
    def _encode(self, prompts: list[str], negatives: list[str] | None, cfg: bool):
        """Text embeddings for [negative..., positive...] (CFG order of diffusers) and SDXL pooled embeds.

        Prompts past 75 tokens are encoded in 75-token chunks (``prompts.py``); positive and negative get
        the same number of chunks.
        """
        chunks = chunks_needed(self.tokenizers, prompts + (negatives or []))
        self._check_tokens(chunks * SEQUENCE)

        def encoder(index: int):
            def encode(ids: torch.Tensor):
                out = self.runners[("text_encoder", "text_encoder_2")[index]](input_ids=ids)
                return (out[self.penultimate[index]], out.get("text_embeds")) if self.sdxl else (out["last_hidden_state"], None)
            return encode

        def run(texts):
            first, _ = encode_chunks(encoder(0), chunked_token_ids(self.tokenizers[0], texts, chunks))
            if not self.sdxl:
                return first, None
            second, pooled = encode_chunks(encoder(1), chunked_token_ids(self.tokenizers[1], texts, chunks))
            return torch.cat([first, second], dim=-1), pooled

        embeds, pooled = run(prompts)
        if not cfg:
            return embeds, pooled
        zero_negative = self.sdxl and negatives is None and self.manifest.get("force_zeros_for_empty_prompt", True)
        if zero_negative:
            neg_embeds, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            neg_embeds, neg_pooled = run(negatives or [""] * len(prompts))
        embeds = torch.cat([neg_embeds, embeds])
        pooled = torch.cat([neg_pooled, pooled]) if self.sdxl else None
        return embeds, pooled

    def __call__(
        self,
        prompt: str | list[str],
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        num_images_per_prompt: int = 1,
        resadapter_alpha: float | str | None = "auto",
        scheduler: str = DEFAULT_SCHEDULER,
        output_type: str = "pil",
        callback: Callable[[int, int], None] | None = None,
        control_image: Any = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        image: Any = None,
        strength: float = 0.8,
        mask_image: Any = None,
        ip_adapter_image: Any = None,
        ip_adapter_scale: float | None = None,
        prompt_weighting: str = DEFAULT_SYNTAX,
        tile_size: int | None = None,
        tile_stride: int | None = None,
        circular: bool = False,
        tile_batch: int | None = None,
        vae_tiling: bool | None = None,
    ) -> GenerationOutput:
        """Generate images; ``output_type="latent"`` skips decoding. ``prompt_weighting`` (a1111 | compel | none)
        reads weights in the prompt and negative prompt (``prompt_weighting.py``, ``compel_encoders.py``).

        Exports with ControlNets take ``control_image`` (one PIL image per ControlNet) and, per
        ControlNet or shared, the conditioning scale and guidance window (fractions of the steps),
        as diffusers' ``StableDiffusionControlNetPipeline`` does. ``image`` (a PIL image; exports with a
        VAE encoder) makes it image-to-image with ``strength`` as diffusers' img2img pipelines; with
        ``mask_image`` too (white: re-generate) it inpaints as ``StableDiffusionInpaintPipeline`` does
        with a 4-channel UNet. Exports with an IP-Adapter take ``ip_adapter_image`` (a PIL image) and
        ``ip_adapter_scale`` (default 1.0, or the baked one); without an image the scale is 0.

        ``tile_size``/``tile_stride`` (pixels; ``circular`` wraps the width, ``tile_batch`` windows per UNet
        call) denoise a canvas beyond the engines' sizes in MultiDiffusion windows (``tiling.py``);
        ``vae_tiling`` (None: only where needed) decodes and encodes in tiles (``vae_tiling.py``).

        Runs four stages, each a method a feature can extend: ``prepare`` (check and resolve the
        request), ``encode`` (text conditioning), ``denoise`` (the scheduler loop), ``decode``.
        """
        started = time.perf_counter()
        request = self.prepare(prompt, height, width, num_inference_steps, guidance_scale, negative_prompt, seed,
                               generator, num_images_per_prompt, resadapter_alpha, scheduler, prompt_weighting,
                               tiling=dict(tile_size=tile_size, tile_stride=tile_stride, circular=circular, tile_batch=tile_batch))
        request.vae_tiling = vae_tiling
        request.control = control_request(self.manifest, control_image, controlnet_conditioning_scale, control_guidance_start,
                                          control_guidance_end, width, height, len(request.prompts), request.cfg, self.device)
        request.init_image = init_image_request(self.runners, image, strength, width, height, num_inference_steps,
                                                self.manifest["vae_scale_factor"])
        mask = mask_request(mask_image, image, width, height, self.manifest["vae_scale_factor"])
        if mask is not None:
            request.init_image.mask = mask
        request.image_prompt = image_prompt_request(self.manifest, self.runners, self.feature_extractor, ip_adapter_image,
                                                    ip_adapter_scale, len(request.prompts), request.cfg)
        timings = Timings()
        tick = time.perf_counter()
        conditioning = self.encode(request)
        timings.text_encoding = time.perf_counter() - tick
        latents = self.denoise(request, conditioning, timings, callback)
        images: list[Image.Image] = []
        if output_type == "pil":
            tick = time.perf_counter()
            images = self.decode(latents, vae_tiling, request.circular)
            timings.decode = time.perf_counter() - tick
        timings.total = time.perf_counter() - started
        return GenerationOutput(images=images, latents=latents.cpu(), alpha=request.alpha, timings=timings,
                                parameters=self._parameters(request))

    def prepare(self, prompt, height, width, steps, guidance_scale, negative_prompt, seed, generator,
                images_per_prompt, resadapter_alpha, scheduler, prompt_weighting: str = DEFAULT_SYNTAX,
                tiling: dict | None = None) -> GenerationRequest:
        """Stage 1: check the request and resolve alpha, the prompt batch and the random generator.

        ``tiling``: ``tiling.tile_plan``'s options; dynamic alpha is then chosen for the tile, the size the UNet sees."""
        tiling = tiling or {"tile_size": None, "tile_stride": None}  # none given: no tiling (serve, the Triton model)
        self._check_request(prompt, height, width, steps, guidance_scale, images_per_prompt, tiled=tiling.get("tile_size") is not None)
        self.check_seed(seed)
        noise_scheduler = make_scheduler(scheduler, self.scheduler_config)
        prompts = ([prompt] if isinstance(prompt, str) else list(prompt))
        prompts = [p for p in prompts for _ in range(images_per_prompt)]
        plan = tile_plan(self, width, height, len(prompts), **tiling)
        alpha = self.resolve_alpha(resadapter_alpha, *(plan.window_size if plan else (width, height)))
        negatives = None
        if negative_prompt is not None:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else \
                [n for n in negative_prompt for _ in range(images_per_prompt)]
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self._check_steps(noise_scheduler, scheduler, steps)
        check_prompts(prompts + (negatives or []), prompt_weighting)
        return GenerationRequest(prompts=prompts, negatives=negatives, height=height, width=width, steps=steps,
                                 guidance_scale=guidance_scale, alpha=alpha, scheduler=scheduler, seed=seed,
                                 generator=generator, noise_scheduler=noise_scheduler, prompt_weighting=prompt_weighting,
                                 tiling=plan)

    def encode(self, request: GenerationRequest) -> Conditioning:
        """Stage 2: text embeddings (and SDXL pooled embeddings) in diffusers' CFG order."""
        from .compel_encoders import encode_prompts

        embeds, pooled = encode_prompts(self, request.prompts, request.negatives, request.cfg, request.prompt_weighting)
        return Conditioning(embeds=embeds, pooled=pooled)

    def unet_static_inputs(self, request: GenerationRequest, conditioning: Conditioning) -> dict[str, torch.Tensor]:
        """UNet inputs that stay the same at every step: text conditioning, SDXL time ids, alpha."""
        embeds = conditioning.embeds
        static = {"encoder_hidden_states": embeds}
        if self.sdxl:
            height, width = request.height, request.width
            time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=self.device).repeat(embeds.shape[0], 1)
            static |= {"text_embeds": conditioning.pooled, "time_ids": time_ids}
        if ALPHA_INPUT in self.unet_inputs:
            static[ALPHA_INPUT] = torch.tensor(request.alpha, dtype=torch.float32, device=self.device)
        prompt = request.image_prompt
        if prompt is None and self.manifest.get("ip_adapter"):  # requests prepared without ``__call__`` (serve): no image
            prompt = image_prompt_request(self.manifest, self.runners, self.feature_extractor, None, None, len(request.prompts),
                                          request.cfg)
        return static | control_static_inputs(request.control) | image_prompt_inputs(prompt, self.unet_inputs, self.device)

    def denoise(self, request: GenerationRequest, conditioning: Conditioning, timings: Timings,
                callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Stage 3: the scheduler loop from seeded noise to final latents (UNet and host time go to ``timings``)."""
        sched = request.noise_scheduler
        scale = self.manifest["vae_scale_factor"]
        shape = (len(request.prompts), 4, request.height // scale, request.width // scale)
        sched.set_timesteps(request.steps)
        if request.init_image is None:
            from diffusers.utils.torch_utils import randn_tensor  # here: importing it loads torch._dynamo and Triton

            latents = randn_tensor(shape, generator=request.generator, dtype=torch.float32).to(self.device) * sched.init_noise_sigma
            timesteps = sched.timesteps
        else:  # image-to-image and inpainting: fewer steps, from the noised source image
            inpaint = request.init_image.mask is not None
            encoder = vae_runner(self, VAE_ENCODER, request.width, request.height, 1, request.vae_tiling)
            start = image_to_image_start(request.init_image, sched, request.steps, encoder,
                                         self.manifest["vae_scaling_factor"], len(request.prompts), request.generator,
                                         inpainting=inpaint)
            timesteps, latents = start.timesteps, start.latents.to(self.device)
            if inpaint:
                draw_masked_image_sample(request.generator, tuple(start.image_latents[:1].shape))
                mask = latent_mask(request.init_image.mask, scale, len(request.prompts))
        static = self.unet_static_inputs(request, conditioning)
        step_kwargs = {"generator": request.generator} if "generator" in _step_parameters(sched) else {}
        cfg, guidance = request.cfg, request.guidance_scale
        unet = TiledUNet(self.runners["unet"], request.tiling, self.sdxl) if request.tiling else self.runners["unet"]

        loop_start = time.perf_counter()
        for index, t in enumerate(timesteps):
            model_input = torch.cat([latents, latents]) if cfg else latents
            model_input = sched.scale_model_input(model_input, t)
            timestep = t.to(self.device, torch.float32).expand(model_input.shape[0]).contiguous()
            tick = time.perf_counter()
            control = control_step_inputs(request.control, index, len(timesteps), self.device)
            noise = unet(sample=model_input, timestep=timestep, **static, **control)["out_sample"]
            timings.unet_steps.append(time.perf_counter() - tick)
            if cfg:
                uncond, text = noise.chunk(2)
                noise = uncond + guidance * (text - uncond)
            latents = sched.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
            if request.init_image is not None and request.init_image.mask is not None:
                latents = blend_unmasked(latents, start, mask, sched, index)
            if callback is not None:
                callback(index + 1, len(timesteps))
        timings.host_overhead = time.perf_counter() - loop_start - sum(timings.unet_steps)
        return latents

    def decode(self, latents: torch.Tensor, vae_tiling: bool | None = None, circular: bool = False) -> list[Image.Image]:
        """Stage 4: latents -> 8-bit RGB images through the VAE decoder (in tiles beyond what it covers, or with
        ``vae_tiling``; a circular canvas with wrapped padding)."""
        decoded = vae_decode(self, latents / self.manifest["vae_scaling_factor"], vae_tiling, circular)
        pixels = ((decoded.float().cpu() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        return [Image.fromarray(p) for p in pixels]

    def _parameters(self, request: GenerationRequest) -> dict:
        """What produced an image, for PNG metadata and logs."""
        return {"prompt": request.prompts[0], "negative_prompt": (request.negatives or [""])[0], "width": request.width,
                "height": request.height, "steps": request.steps, "scheduler": request.scheduler,
                "scheduler_class": type(request.noise_scheduler).__name__,
                "guidance_scale": request.guidance_scale, "seed": request.seed, "resadapter_alpha": request.alpha,
                "alpha_mode": self.manifest["alpha_mode"], "backend": self.backend, "family": self.family,
                "prompt_weighting": request.prompt_weighting,
                **(request.control.parameters() if request.control else {}),
                **(request.tiling.parameters() if request.tiling else {}),
                **({"strength": request.init_image.strength} if request.init_image else {}),
                **({"inpainting": True} if request.init_image and request.init_image.mask is not None else {}),
                **(request.image_prompt.parameters() if request.image_prompt else {}),
                **({"cpu_precision": self.cpu_precision, "precision": dict(self.precisions)} if self.precisions else {})}


def _step_parameters(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)
