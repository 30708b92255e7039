"""Resolution profiles: which sizes an engine serves, and all pixel -> latent shape math in one place.

Spec grammar (``--profile``): ``MIN-MAX[@AMIN-AMAX][,opt=WxH][,batch=A-B][,tokens=A-B]``, e.g.
``256-1024@0.28-3.5,opt=768x768,batch=1-2``: each side from 256 to 1024 px, width/height from
0.28 to 3.5, optimised for 768x768, 1-2 images per request, prompts of 77 tokens (default).
``--static WxH`` is the one-size profile. TensorRT profiles are boxes per dimension, so the aspect
range is enforced by ``covers`` (and by the runtime), not by the engine.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from ..errors import ResAdapterRTError
from ..models.families import FAMILIES

LATENT_FACTOR = 8
TOKEN_CHUNK = 77
# Per family: the official adapters' model-card pixel ranges (v2_sd1.5 128-1024, v2_sdxl 256-1536).
FAMILY_PIXEL_RANGE = {family.name: family.pixel_range for family in FAMILIES.values()}
PRESETS = {
    "resadapter_v2_sd1.5": "128-1024@0.28-3.5,opt=512x512",
    "resadapter_v2_sdxl": "256-1536@0.28-3.5,opt=1024x1024",
    "resadapter_v1_sd1.5": "128-1024@0.28-3.5,opt=512x512",
    "resadapter_v1_sdxl": "256-1536@0.28-3.5,opt=1024x1024",
}
_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_SPEC = re.compile(rf"^(\d+)-(\d+)(?:@({_NUMBER})-({_NUMBER}))?((?:,[a-z]+=[^,]+)*)$")


@dataclass(frozen=True)
class ResolutionProfile:
    """Sizes in pixels (each side), aspect = width / height, batch = images per request."""

    min_px: int
    max_px: int
    min_aspect: float
    max_aspect: float
    opt_width: int
    opt_height: int
    batch: tuple[int, int, int] = (1, 1, 1)
    tokens: tuple[int, int, int] = (TOKEN_CHUNK, TOKEN_CHUNK, TOKEN_CHUNK)

    def __post_init__(self) -> None:
        text = self.describe()
        for value in (self.min_px, self.max_px, self.opt_width, self.opt_height):
            if value <= 0 or value % LATENT_FACTOR:
                raise ResAdapterRTError(f"profile {text}: {value} px is not a positive multiple of {LATENT_FACTOR}")
        if self.min_px > self.max_px:
            raise ResAdapterRTError(f"profile {text}: minimum {self.min_px} px exceeds maximum {self.max_px} px")
        if not 0 < self.min_aspect <= self.max_aspect:
            raise ResAdapterRTError(f"profile {text}: aspect range must be 0 < min <= max")
        for name, (low, opt, high) in (("batch", self.batch), ("tokens", self.tokens)):
            if not 0 < low <= opt <= high:
                raise ResAdapterRTError(f"profile {text}: {name} range must satisfy 0 < min <= opt <= max")
        if any(t % TOKEN_CHUNK for t in self.tokens):
            raise ResAdapterRTError(f"profile {text}: token counts must be multiples of {TOKEN_CHUNK}")
        if not self.covers(self.opt_width, self.opt_height, self.batch[0], self.tokens[0]):
            raise ResAdapterRTError(f"profile {text}: opt size {self.opt_width}x{self.opt_height} is outside the profile")

    @classmethod
    def parse(cls, spec: str) -> "ResolutionProfile":
        match = _SPEC.match(spec.replace(" ", ""))
        if not match:
            raise ResAdapterRTError(
                f"profile {spec!r} is not MIN-MAX[@AMIN-AMAX][,opt=WxH][,batch=A-B][,tokens=A-B], e.g. 256-1024@0.28-3.5,opt=768x768")
        low, high = int(match[1]), int(match[2])
        aspect = (float(match[3]), float(match[4])) if match[3] else (min(low / high, 1.0), max(high / low, 1.0))
        options = dict(item.split("=", 1) for item in match[5].split(",") if item)
        unknown = set(options) - {"opt", "batch", "tokens"}
        if unknown:
            raise ResAdapterRTError(f"profile {spec!r}: unknown option {sorted(unknown)[0]!r}; use opt=, batch= or tokens=")
        opt = parse_size(options["opt"], spec) if "opt" in options else _default_opt(low, high, aspect)
        if opt is None:
            raise ResAdapterRTError(f"profile {spec!r}: no size with both sides in {low}-{high} px (multiples of "
                                    f"{LATENT_FACTOR}) has an aspect ratio in {aspect[0]:g}-{aspect[1]:g}; widen one of the ranges")
        batch = _range(options.get("batch", "1-1"), spec, "batch")
        tokens = _range(options.get("tokens", f"{TOKEN_CHUNK}-{TOKEN_CHUNK}"), spec, "tokens")
        return cls(low, high, aspect[0], aspect[1], opt[0], opt[1], (batch[0], batch[0], batch[1]), (tokens[0], tokens[0], tokens[1]))

    @classmethod
    def static(cls, size: str, batch: int = 1) -> "ResolutionProfile":
        width, height = parse_size(size, size)
        if width <= 0 or height <= 0:
            raise ResAdapterRTError(f"static size {size!r}: width and height must be positive multiples of {LATENT_FACTOR} px, e.g. 1000x600")
        return cls(min(width, height), max(width, height), width / height, width / height, width, height, (batch,) * 3)

    def covers(self, width: int, height: int, batch: int = 1, tokens: int = TOKEN_CHUNK) -> bool:
        if width % LATENT_FACTOR or height % LATENT_FACTOR:
            return False
        sides = self.min_px <= width <= self.max_px and self.min_px <= height <= self.max_px
        static = self.min_aspect == self.max_aspect
        aspect_ok = (width, height) == (self.opt_width, self.opt_height) if static else \
            self.min_aspect - 1e-9 <= width / height <= self.max_aspect + 1e-9
        return sides and aspect_ok and self.batch[0] <= batch <= self.batch[2] and self.tokens[0] <= tokens <= self.tokens[2]

    def describe(self) -> str:
        return (f"{self.min_px}-{self.max_px}@{self.min_aspect:g}-{self.max_aspect:g},opt={self.opt_width}x{self.opt_height},"
                f"batch={self.batch[0]}-{self.batch[2]},tokens={self.tokens[0]}-{self.tokens[2]}")

    def latent_box(self) -> dict[str, tuple[int, int]]:
        """(min, opt, max) latent height and width: TensorRT's box around the pixel profile."""
        if self.min_aspect == self.max_aspect:  # static
            h, w = self.opt_height // LATENT_FACTOR, self.opt_width // LATENT_FACTOR
            return {"height": (h, h, h), "width": (w, w, w)}
        low, high = self.min_px // LATENT_FACTOR, self.max_px // LATENT_FACTOR
        return {"height": (low, self.opt_height // LATENT_FACTOR, high), "width": (low, self.opt_width // LATENT_FACTOR, high)}

    def component_shapes(self, component: str, dims: dict, guidance: bool = True) -> dict[str, tuple[tuple[int, ...], ...]]:
        """(min, opt, max) shape per dynamic input of ``component``.

        ``dims``: channel sizes read from the export manifest (``latent_channels``,
        ``cross_attention_dim``, ``pooled_dim`` for SDXL, ``controlnets``: how many the UNet graph holds,
        ``image_embed_shape`` and ``image_size`` for an IP-Adapter).
        With classifier-free guidance the UNet sees twice the batch; guidance-free requests (LCM) see
        the plain batch, so both fit. Control images get the latent box in pixels.
        """
        box = self.latent_box()
        h, w = box["height"], box["width"]
        b = self.batch
        if component == "unet":
            ub = (b[0], 2 * b[1] if guidance else b[1], 2 * b[2])
            t = self.tokens
            shapes = {
                "sample": tuple((ub[i], dims["latent_channels"], h[i], w[i]) for i in range(3)),
                "timestep": tuple((ub[i],) for i in range(3)),
                "encoder_hidden_states": tuple((ub[i], t[i], dims["cross_attention_dim"]) for i in range(3)),
            }
            if dims.get("pooled_dim"):
                shapes["text_embeds"] = tuple((ub[i], dims["pooled_dim"]) for i in range(3))
                shapes["time_ids"] = tuple((ub[i], 6) for i in range(3))
            if dims.get("controlnets"):  # control images: the latent box in pixels (controlnet_scale is static)
                n, f = dims["controlnets"], LATENT_FACTOR
                shapes["controlnet_cond"] = tuple((n, ub[i], 3, f * h[i], f * w[i]) for i in range(3))
            if dims.get("image_embed_shape"):  # one IP-Adapter image per sample (ip_adapter_scale is static)
                shapes["image_embeds"] = tuple((ub[i], 1, *dims["image_embed_shape"]) for i in range(3))
            return shapes
        if component == "image_encoder":  # the image prompt, and a zero image for plus/full-face negatives
            size = dims["image_size"]
            return {"pixel_values": tuple((count, 3, size, size) for count in (1, 2, 2))}
        if component in ("text_encoder", "text_encoder_2"):  # a long prompt runs one 77-token chunk per row
            rows = (b[0], b[1] * (self.tokens[1] // TOKEN_CHUNK), b[2] * (self.tokens[2] // TOKEN_CHUNK))
            return {"input_ids": tuple((rows[i], TOKEN_CHUNK) for i in range(3))}
        if component == "vae_decoder":
            return {"latent_sample": tuple((b[i], dims["latent_channels"], h[i], w[i]) for i in range(3))}
        if component == "vae_encoder":  # image-to-image: the source image, in pixels
            return {"sample": tuple((b[i], 3, LATENT_FACTOR * h[i], LATENT_FACTOR * w[i]) for i in range(3))}
        raise ResAdapterRTError(f"no profile shapes for component {component!r}")

    def to_json(self) -> dict:
        return {**asdict(self), "spec": self.describe()}


def parse_size(text: str, spec: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[x×](\d+)", text.strip())
    if not match:
        raise ResAdapterRTError(f"{spec!r}: size {text!r} is not WIDTHxHEIGHT, e.g. 1000x600")
    return int(match[1]), int(match[2])


def _range(text: str, spec: str, name: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)-(\d+)", text.strip())
    if not match:
        raise ResAdapterRTError(f"profile {spec!r}: {name} {text!r} is not MIN-MAX, e.g. 1-4")
    return int(match[1]), int(match[2])


def _default_opt(low: int, high: int, aspect: tuple[float, float]) -> tuple[int, int] | None:
    """The size inside the profile closest to the geometric middle of the side range, as square as the
    aspect range allows (multiples of 8); None when no size fits the profile."""
    side = int(round((low * high) ** 0.5 / LATENT_FACTOR)) * LATENT_FACTOR
    target = min(max(1.0, aspect[0]), aspect[1])
    best, best_score = None, None
    first = -(-low // LATENT_FACTOR) * LATENT_FACTOR
    for height in range(first, high + 1, LATENT_FACTOR):
        narrow = max(first, -(-math.ceil(height * aspect[0] - 1e-9) // LATENT_FACTOR) * LATENT_FACTOR)
        wide = min(high // LATENT_FACTOR * LATENT_FACTOR, int(height * aspect[1] + 1e-9) // LATENT_FACTOR * LATENT_FACTOR)
        if narrow > wide:
            continue
        width = min(max(int(round(height * target / LATENT_FACTOR)) * LATENT_FACTOR, narrow), wide)
        score = (abs(math.log(width * height / side**2)), abs(math.log(width / height / target)))
        if best_score is None or score < best_score:
            best, best_score = (width, height), score
    if best is None and low > high:
        return side, side  # an inverted range: __post_init__ names that error
    return best


def preset_for(adapter_source: str, family: str) -> ResolutionProfile:
    """The official adapter's model-card profile when recognised, else the family's range."""
    for name, spec in PRESETS.items():
        if adapter_source.rstrip("/").endswith(name):
            return ResolutionProfile.parse(spec)
    low, high = FAMILY_PIXEL_RANGE[family]
    opt = 512 if family == "sd15" else 1024
    return ResolutionProfile.parse(f"{low}-{high}@0.28-3.5,opt={opt}x{opt}")
