"""``mini-sd15``: a small SD1.5-architecture model trained here, and its ResAdapter, shipped in the package.

Built in like the tiny models (``models/tiny.py``), but trained: ``resadapter_rt/miniature/`` holds the
data, the scorer, the training script and the demo. The architecture is SD1.5's (an AutoencoderKL with
8x downsampling, a CLIP text encoder and tokenizer, a UNet2DConditionModel with four down blocks and three
down/upsamplers, the SD noise schedule) at widths a 2-core CPU trains in minutes. The tokenizer is CLIP's
byte-level BPE with merges learnt on the grammar's words, so each word is one token; the VAE is set by hand
(``colour_codec_vae``). ``examples/train_miniature.sh`` trains the rest; the weights live in
``resadapter_rt/miniature/weights/``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..errors import ResAdapterRTError

MINI_NAME = "mini-sd15"
TRAINING_SIZE = 128  # the one size the base model saw (pixels, square)
WEIGHTS = Path(__file__).resolve().parents[1] / "miniature" / "weights"  # package data, not code
PIPELINE_DIR = WEIGHTS / MINI_NAME
ADAPTER_DIR = WEIGHTS / f"{MINI_NAME}-resadapter"
MODEL_FACTS = "resadapter_rt.json"  # {"training_size": ..., "pixel_range": [...]} beside model_index.json
PIXEL_RANGE = (64, 512)  # per side, what its exports serve: 1/2x to 4x the training size
CLIP_WIDTH = 64
# The grammar's words (miniature/shapes.py, whose tests check the two lists agree).
WORDS = ("a", "on", "background", "red", "green", "blue", "yellow", "magenta", "cyan", "circle", "square", "triangle",
         "white", "black")


def unet_config() -> dict:
    """SD1.5's block layout (4 down blocks, 3 samplers, cross-attention in the middle two) at small widths."""
    return dict(
        sample_size=TRAINING_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(32, 64, 96, 96),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CLIP_WIDTH, attention_head_dim=8,
    )


def vae_config() -> dict:
    """An 8x AutoencoderKL without the mid-block attention, 16 channels throughout (set by hand: ``colour_codec_vae``)."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        block_out_channels=(16, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        mid_block_add_attention=False, scaling_factor=1.0,
    )


# The codec's signal layout in every 16-channel activation: per GroupNorm group of four channels (c, -c, K, -K)
# for c in R, G, B, and a group of zeros. The pairs make each group's mean exactly 0 and the constants fix its
# standard deviation at ~K/sqrt(2) (image content moves it by < 1/(2K^2)), so GroupNorm is a known scaling.
_SIGNAL = (0, 4, 8)  # channel of +R, +G, +B; -c at +1, +K at +2, -K at +3
_K = 50.0
_GAIN = 0.01  # GroupNorm output |c| / sigma * gain stays <= 0.01: SiLU is linear there to ~1e-6 (odd part)


def _center(conv: Any, mapping: dict[tuple[int, int], float], bias: dict[int, float] | None = None,
            taps: tuple[tuple[int, int], ...] | None = None) -> None:
    """Zero ``conv``, then set weights[out, in] at the given taps (default: the centre) and the biases."""
    with torch.no_grad():
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()
        k = conv.weight.shape[-1]
        for (out, inp), value in mapping.items():
            for y, x in taps or ((k // 2, k // 2),):
                conv.weight[out, inp, y, x] = value / len(taps or ((0, 0),))
        for out, value in (bias or {}).items():
            conv.bias[out] = value


def _layout_from(sources: tuple[int, int, int]) -> tuple[dict[tuple[int, int], float], dict[int, float]]:
    """Weights writing (c, -c) from three input channels and the (K, -K) biases."""
    mapping, bias = {}, {}
    for channel, source in zip(_SIGNAL, sources):
        mapping[(channel, source)] = 1.0
        mapping[(channel + 1, source)] = -1.0
        bias[channel + 2], bias[channel + 3] = _K, -_K
    return mapping, bias


def _readout(norm: Any, conv: Any, extra_bias: dict[int, float] | None = None) -> None:
    """GroupNorm -> SiLU -> ``conv`` returning c exactly to first order (the SiLU's even part cancels in c, -c)."""
    sigma = _K / math.sqrt(2.0)
    slope = 0.5  # SiLU'(0)
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.zero_()
        for channel in _SIGNAL:
            norm.weight[channel] = norm.weight[channel + 1] = _GAIN
    scale = sigma / (_GAIN * slope) / 2
    mapping = {}
    for out, channel in enumerate(_SIGNAL):
        mapping[(out, channel)] = scale
        mapping[(out, channel + 1)] = -scale
    _center(conv, mapping, extra_bias)


def colour_codec_vae() -> Any:
    """The AutoencoderKL of mini-sd15, set by hand rather than trained: an exact 8x colour codec.

    The encoder averages each 8x8 pixel block (latent channels 0-2: mean R, G, B in [-1, 1]; channel 3:
    zero; a log-variance of -30, so sampling adds ~3e-7); the decoder paints each latent pixel back as an
    8x8 block (nearest upsampling). Every ResNet adds zero (its second convolution is zero), and the
    GroupNorms before the outputs see a signal layout that makes them a known scaling (see ``_SIGNAL``).
    A VAE trained here from scratch measured colour-blind after 2,500 CPU steps, which is why the
    miniature's only learned networks are the text encoder and the UNet.
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**vae_config())
    with torch.no_grad():
        for name, module in vae.named_modules():
            if name.endswith("conv2") or name.endswith("conv1"):
                module.weight.zero_()
                module.bias.zero_()
        channels = list(range(16))
        identity = {(c, c): 1.0 for c in channels}
        encoder, decoder = vae.encoder, vae.decoder
        _center(encoder.conv_in, *_layout_from((0, 1, 2)))
        for block in encoder.down_blocks:
            for down in block.downsamplers or ():
                _center(down.conv, identity, taps=((0, 0), (0, 1), (1, 0), (1, 1)))  # 2x2 mean (padding is past tap 1)
        _readout(encoder.conv_norm_out, encoder.conv_out, {4: -30.0, 5: -30.0, 6: -30.0, 7: -30.0})
        _center(vae.quant_conv, {(c, c): 1.0 for c in range(8)})
        _center(vae.post_quant_conv, {(c, c): 1.0 for c in range(4)})
        _center(decoder.conv_in, *_layout_from((0, 1, 2)))
        for block in decoder.up_blocks:
            for up in block.upsamplers or ():
                _center(up.conv, identity)
        _readout(decoder.conv_norm_out, decoder.conv_out)
    return vae.eval()


def text_config(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=CLIP_WIDTH, intermediate_size=4 * CLIP_WIDTH, num_attention_heads=4,
                num_hidden_layers=2, max_position_embeddings=77, projection_dim=CLIP_WIDTH,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                hidden_act="quick_gelu")


def scheduler_config() -> dict:
    """SD1.5's noise schedule; sampling with Euler as SD1.5 pipelines commonly do."""
    return dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")


def _learn_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """BPE merges (most frequent pair first, ties by name) until every word is one symbol."""
    pieces = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in words]
    merges = []
    while any(len(p) > 1 for p in pieces):
        pairs = Counter(pair for p in pieces for pair in zip(p, p[1:]))
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged = []
        for p in pieces:
            out, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == best:
                    out.append(p[i] + p[i + 1])
                    i += 2
                else:
                    out.append(p[i])
                    i += 1
            merged.append(tuple(out))
        pieces = merged
    return merges


def write_tokenizer(directory: Path) -> int:
    """A CLIPTokenizer over CLIP's byte alphabet plus the grammar's words; returns the vocabulary size."""
    from transformers import CLIPTokenizer

    from .tiny import byte_vocabulary

    directory.mkdir(parents=True, exist_ok=True)
    base = byte_vocabulary()
    specials = [t for t in base if t.startswith("<|")]
    tokens = [t for t in base if not t.startswith("<|")]
    merges = _learn_merges(WORDS)
    tokens += [a + b for a, b in merges if a + b not in tokens]
    vocab = {token: index for index, token in enumerate(tokens + specials)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(directory)
    return len(vocab)


def pipeline_dir() -> Path:
    """The shipped ``mini-sd15`` pipeline directory (diffusers layout)."""
    if not (PIPELINE_DIR / "model_index.json").is_file():
        raise ResAdapterRTError(f"{PIPELINE_DIR}: the mini-sd15 weights are missing from this installation; "
                                "reinstall resadapter-rt or run benchmarks/train_miniature.py")
    return PIPELINE_DIR


def adapter_dir() -> Path:
    """The shipped ResAdapter of ``mini-sd15`` (official release layout)."""
    if not (ADAPTER_DIR / "pytorch_lora_weights.safetensors").is_file():
        raise ResAdapterRTError(f"{ADAPTER_DIR}: the mini-sd15 ResAdapter is missing from this installation; "
                                "reinstall resadapter-rt or run benchmarks/train_miniature.py")
    return ADAPTER_DIR


def model_facts(directory: Path) -> dict:
    """What a pipeline directory declares about itself in ``resadapter_rt.json``, checked.

    ``training_size`` (pixels, the size it was trained at: ``--alpha auto`` is relative to it) and
    ``pixel_range`` ([low, high] pixels per side its exports serve). Absent keys: the family's values.
    """
    path = directory / MODEL_FACTS
    if not path.is_file():
        return {}
    try:
        facts = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        facts = None
    if not isinstance(facts, dict):
        raise ResAdapterRTError(f"{path}: not a JSON object; write e.g. {{\"training_size\": 512, \"pixel_range\": [128, 1024]}}")
    size, pixel_range = facts.get("training_size"), facts.get("pixel_range")
    if size is not None and (not isinstance(size, int) or size < 64 or size % 8):
        raise ResAdapterRTError(f"{path}: training_size {size!r} is not a multiple of 8 of at least 64 pixels")
    if pixel_range is not None and not (isinstance(pixel_range, list) and len(pixel_range) == 2
                                        and all(isinstance(v, int) and v > 0 and v % 8 == 0 for v in pixel_range)
                                        and pixel_range[0] <= pixel_range[1]):
        raise ResAdapterRTError(f"{path}: pixel_range {pixel_range!r} is not [low, high] in multiples of 8 px, low <= high")
    return {key: value for key, value in (("training_size", size), ("pixel_range", pixel_range)) if value is not None}
