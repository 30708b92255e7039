"""Beyond the engine's sizes: MultiDiffusion tiling against diffusers' StableDiffusionPanoramaPipeline, tiled VAE
against ``AutoencoderKL.enable_tiling()``, every network call inside the export's range, the hires fix, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import quiet
from resadapter_rt import ResAdapterRTError, load_adapter, load_components, merge_pipeline
from resadapter_rt.cli import main
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.export.specs import VaeDecoderForExport
from resadapter_rt.export.vae_encoder import VaeEncoderForExport
from resadapter_rt.models.families import SD15
from resadapter_rt.models.tiny import tiny_pipeline_dir
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.alpha_policy import auto_alpha
from resadapter_rt.runtime.hires import HiresFix
from resadapter_rt.runtime.runners import TorchRunner
from resadapter_rt.engines.tile_windows import axis_starts, plan_windows
from resadapter_rt.runtime.tiling import add_into, crop
from resadapter_rt.runtime.vae_tiling import TiledVae

ALPHA = 0.8
# SD1.5's own scheduler config (clip_sample off), so that "ddim" is the DDIM users of SD1.5 get
SD15_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1,
                  "trained_betas": None}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The tiny SD1.5 with SD1.5's DDIM config, dynamic alpha and a VAE encoder; it covers 128-1024 px per side."""
    model = tmp_path_factory.mktemp("tiling") / "model"
    shutil.copytree(tiny_pipeline_dir(SD15), model)
    (model / "scheduler/scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER))
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps(index | {"scheduler": ["diffusers", "DDIMScheduler"]}))
    out = model.parent / "export"
    export_pipeline(ExportOptions(model=str(model), resadapter="tiny-sd15", alpha="dynamic", vae_encoder=True,
                                  validation_sizes=((128, 128, 1),)), out, progress=quiet)
    return out


@pytest.fixture(scope="module")
def pipe(export):
    return ResAdapterPipeline.from_artifacts(export)


class Recorder:
    """A runner that records the shape of every call's main input."""

    def __init__(self, runner, name: str, calls: list) -> None:
        self.runner, self.name, self.calls, self.input_names = runner, name, calls, runner.input_names

    def __call__(self, **inputs):
        main_input = inputs.get("sample", inputs.get("latent_sample"))
        self.calls.append((self.name, tuple(main_input.shape)))
        return self.runner(**inputs)


def pixel_sides(name: str, shape: tuple) -> tuple:
    """A recorded call's height and width in pixels (the VAE encoder takes pixels, the others latents)."""
    return shape[2:] if name == "vae_encoder" else tuple(8 * side for side in shape[2:])


def recording(pipe, names=("unet", "vae_decoder", "vae_encoder")) -> list:
    calls: list = []
    for name in names:
        pipe.runners[name] = Recorder(pipe.runners[name], name, calls)
    return calls


def panorama(export, window: int, stride: int):
    """diffusers' StableDiffusionPanoramaPipeline over the same merged weights; window and stride in latents
    (diffusers fixes them at 64 and 8: the full-size case uses those)."""
    from diffusers import DDIMScheduler, StableDiffusionPanoramaPipeline

    parts = load_components(str(export.parent / "model"))
    merged = merge_pipeline(parts, load_adapter("tiny-sd15"), ALPHA)
    pano = StableDiffusionPanoramaPipeline.from_pipe(merged.to_diffusers(DDIMScheduler.from_config(SD15_SCHEDULER)))
    pano.set_progress_bar_config(disable=True)
    pano.get_views = lambda h, w, circular_padding=False: StableDiffusionPanoramaPipeline.get_views(
        pano, h, w, window, stride, circular_padding)
    return pano


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(i, dtype=np.float32) / 255 for i in images])


# -- window planning -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height,width,circular", [(64, 128, False), (64, 200, False), (80, 96, True), (64, 256, True)])
def test_windows_match_diffusers_where_it_covers_the_canvas_whole(height, width, circular):
    from diffusers import StableDiffusionPanoramaPipeline

    ours = [(w.top, w.top + w.height, w.left, w.left + w.width) for w in plan_windows(height, width, 64, 8, circular)]
    theirs = StableDiffusionPanoramaPipeline.get_views(None, height * 8, width * 8, 64, 8, circular)
    assert ours == [tuple(int(v) for v in view) for view in theirs]


def test_windows_cover_every_latent_pixel_where_diffusers_drops_the_remainder():
    from diffusers import StableDiffusionPanoramaPipeline

    assert axis_starts(100, 64, 24) == [0, 24, 36]  # the last window ends at the edge
    theirs = StableDiffusionPanoramaPipeline.get_views(None, 512, 800, 64, 24)
    assert max(int(v[3]) for v in theirs) == 88  # diffusers leaves columns 88-99 to noise
    assert axis_starts(100, 64, 24, circular=True) == [0, 24, 48, 72, 96]  # ceil(100 / 24) windows, wrapping
    assert axis_starts(40, 64, 24) == [0]
    for height, width, tile, stride, circular in ((37, 101, 16, 5, False), (16, 45, 16, 7, True)):
        count = torch.zeros(1, 1, height, width)
        for w in plan_windows(height, width, tile, stride, circular):
            add_into(count, torch.ones(1, 1, w.height, w.width), w.top, w.left)
        assert count.min() >= 1 and count.sum() == len(plan_windows(height, width, tile, stride, circular)) * 16 * 16


def test_wrapping_crop_and_accumulate_match_a_rolled_canvas():
    canvas = torch.randn(2, 4, 6, 10)
    assert torch.equal(crop(canvas, 1, 7, 4, 5), torch.roll(canvas, -7, dims=3)[..., 1:5, :5])
    total = torch.zeros(2, 4, 6, 10)
    add_into(total, canvas[..., :4, :5], 1, 7)
    expected = torch.zeros(2, 4, 6, 10)
    expected[..., 1:5, :5] = canvas[..., :4, :5]
    assert torch.equal(total, torch.roll(expected, 7, dims=3))


# -- tiled VAE ------------------------------------------------------------------------------------------------------
def test_tiled_vae_equals_diffusers_enable_tiling():
    """Decode and encode at 192x160 px in 64 px tiles (diffusers' tile size set to match); short edge tiles widened."""
    vae = load_components("tiny-sd15").vae.eval()
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = 64, 8
    z = torch.randn(1, 4, 20, 24, generator=torch.Generator().manual_seed(0))
    x = torch.rand(1, 3, 160, 192, generator=torch.Generator().manual_seed(1)) * 2 - 1
    decoder = TorchRunner(VaeDecoderForExport(vae), ("latent_sample",), ("sample",))
    encoder = TorchRunner(VaeEncoderForExport(vae), ("sample",), ("latent_parameters",))
    with torch.no_grad():
        expected_pixels, expected_moments = vae.decode(z).sample, vae._encode(x)
    pixels_out = TiledVae(decoder, 64, 8, decoder=True)(latent_sample=z)["sample"]
    moments = TiledVae(encoder, 64, 8, decoder=False)(sample=x)["latent_parameters"]
    assert pixels_out.shape == expected_pixels.shape and float((pixels_out - expected_pixels).abs().max()) < 1e-5
    assert moments.shape == expected_moments.shape and float((moments - expected_moments).abs().max()) < 1e-5
    calls = []
    widened = TiledVae(Recorder(decoder, "vae_decoder", calls), 64, 48, decoder=True)(latent_sample=z)["sample"]
    assert widened.shape == expected_pixels.shape and min(min(shape[2:]) for _, shape in calls) == 6  # 48 px: the minimum
    assert torch.equal(widened[..., :96, :96], pixels_out[..., :96, :96])  # away from the short edge tiles: the same


# -- MultiDiffusion against diffusers -------------------------------------------------------------------------------
def test_a_single_window_is_plain_generation(pipe):
    kwargs = dict(height=192, width=256, num_inference_steps=2, seed=3, scheduler="ddim")
    plain = pipe("a lighthouse", **kwargs)
    tiled = pipe("a lighthouse", tile_size=256, tile_stride=128, **kwargs)
    assert tiled.parameters["tiles"] == 1 and torch.equal(tiled.latents, plain.latents)
    assert np.array_equal(pixels(tiled.images), pixels(plain.images))


@pytest.mark.parametrize("circular", [False, True])
def test_small_panorama_matches_diffusers(export, pipe, circular):
    """128 px windows at a 64 px stride over 128x384 px (diffusers' view size patched from 64 to 16 latents)."""
    kwargs = dict(height=128, width=384, num_inference_steps=3, guidance_scale=6.0, negative_prompt="fog")
    ours = pipe("a mountain range", tile_size=128, tile_stride=64, circular=circular, seed=7, resadapter_alpha=ALPHA,
                scheduler="ddim", **kwargs)
    theirs = panorama(export, 16, 8)("a mountain range", generator=torch.Generator().manual_seed(7), circular_padding=circular,
                                     **kwargs).images
    assert ours.parameters["tiles"] == (6 if circular else 5)
    assert float(np.abs(pixels(ours.images) - pixels(theirs)).max()) <= 2 / 255  # measured: 1/255 (8-bit rounding)


def test_alpha_is_chosen_for_the_window_the_unet_sees(pipe):
    request = pipe.prepare("a city", 2048, 4096, 2, 7.0, None, 0, None, 1, "auto", "ddim",
                           tiling=dict(tile_size=512, tile_stride=384))
    assert request.alpha == auto_alpha(512, 512, 512) == 1.0 != auto_alpha(4096, 2048, 512)
    assert request.tiling.window_size == (512, 512) and len(request.tiling.windows) == 5 * 11


BAD_TILING = [
    (dict(tile_size=500), "tile size 500 is not a positive multiple of 8 px; use e.g. 512"),
    (dict(tile_size=512, tile_stride=0), "tile stride 0 is not a positive multiple of 8 px; use e.g. 512"),
    (dict(tile_size=256, tile_stride=384), "tile stride 384 px is larger than the tile size 256 px, which would leave gaps; "
                                           "use a stride of at most 256 px (e.g. 192)"),
    (dict(tile_stride=256), "tile_stride needs a tile size; pass --tile-size PX (tile_size=) as well, e.g. "
                            "--tile-size 1024 --tile-stride 768"),
    (dict(circular=True), "circular needs a tile size; pass --tile-size PX (tile_size=) as well, e.g. "
                          "--tile-size 1024 --tile-stride 768"),
    (dict(tile_size=2048), "tiles of 2048x1024 px (batch 1) are outside what the UNet covers (128-1024 px per side); "
                           "choose a tile size inside it, e.g. --tile-size 1024 --tile-stride 768"),
    (dict(tile_size=512, tile_batch=0), "tile batch must be a positive integer (windows per UNet call), got 0"),
    (dict(tile_size=2048, circular=True), "circular tiling needs a canvas wider than the tile (2048 px <= 2048 px); "
                                          "use a smaller --tile-size or a wider canvas"),
]


@pytest.mark.parametrize("options,message", BAD_TILING, ids=[m[:24] for _, m in BAD_TILING])
def test_bad_tiling_options_are_one_line_errors(pipe, options, message):
    with pytest.raises(ResAdapterRTError) as info:
        pipe("a city", height=1024, width=2048 if "tile_size" in options else 1024, num_inference_steps=1, output_type="latent",
             **options)
    assert str(info.value) == message


def test_vae_tiling_switch(pipe):
    z = torch.zeros(1, 4, 256, 32)
    with pytest.raises(ResAdapterRTError, match=r"^vae_tiling must be True, False or None \(tile only where needed\), got 'yes'$"):
        pipe.decode(z, vae_tiling="yes")
    with pytest.raises(ResAdapterRTError, match=r"^256x2048 is beyond what the VAE covers and VAE tiling is off; leave vae_tiling "):
        pipe.decode(z, vae_tiling=False)


@pytest.mark.parametrize("extra,message", [  # checked before the export is loaded (the size hint: test_runtime.py)
    (["--hires-strength", "0.4"], "--hires-strength and --hires-steps need --hires-scale (e.g. --hires-scale 2)"),
    (["--hires-scale", "1"], "hires scale must be a number in (1, 8], got 1.0; e.g. 2 for twice the base size"),
])
def test_generate_cli_checks_hires_options_first(export, tmp_path, capsys, extra, message):
    out = tmp_path / "x.png"
    code = main(["generate", "--artifacts", str(export), "--prompt", "a city", "--width", "2048", "--height", "512",
                 "--steps", "1", "-q", "-o", str(out), *extra])
    assert code == 2 and capsys.readouterr().err.strip() == "error: " + message
    assert not out.exists()


# -- extended: full-size panorama parity, 2048^2 and 4096x1024 inside the range, VAE at 2048^2, hires fix --------------
@pytest.mark.parametrize("width,circular", [(1024, False), (768, True)])
def test_full_size_panorama_matches_diffusers(export, pipe, width, circular):
    """--tile-size 512 --tile-stride 64: diffusers' own window and stride."""
    kwargs = dict(height=512, width=width, num_inference_steps=2, guidance_scale=7.5)
    ours = pipe("a beach", tile_size=512, tile_stride=64, circular=circular, seed=2, resadapter_alpha=ALPHA, scheduler="ddim",
                **kwargs)
    theirs = panorama(export, 64, 8)("a beach", generator=torch.Generator().manual_seed(2), circular_padding=circular,
                                     **kwargs).images
    assert float(np.abs(pixels(ours.images) - pixels(theirs)).max()) <= 2 / 255  # measured: 1/255 (8-bit rounding)


@pytest.mark.parametrize("width,height,windows", [(2048, 2048, 25), (4096, 1024, 33)])
def test_every_call_stays_inside_the_exports_range(export, width, height, windows):
    pipe = ResAdapterPipeline.from_artifacts(export)
    calls = recording(pipe)
    out = pipe("a panorama", width=width, height=height, num_inference_steps=1, tile_size=512, tile_stride=384, seed=1)
    assert out.images[0].size == (width, height) and out.parameters["tiles"] == windows
    unet = [shape for name, shape in calls if name == "unet"]
    assert sum(shape[0] for shape in unet) == 2 * windows  # every window once per step, with its CFG pair
    assert all(shape[0] <= 2 * 8 for shape in unet)  # 8 windows per call
    for name, shape in calls:
        assert all(128 <= side <= 1024 for side in pixel_sides(name, shape)), (name, shape)
    assert {name for name, _ in calls} == {"unet", "vae_decoder"}


def test_tiled_vae_decode_at_2048_equals_diffusers(export):
    pipe = ResAdapterPipeline.from_artifacts(export)
    vae = load_components("tiny-sd15").vae.eval()
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = 512, 64
    z = torch.randn(1, 4, 256, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = vae.decode(z).sample
    calls = recording(pipe, ("vae_decoder",))
    ours = torch.from_numpy(pixels(pipe.decode(z * pipe.manifest["vae_scaling_factor"]))).permute(0, 3, 1, 2)
    expected = ((expected / 2 + 0.5).clamp(0, 1) * 255).round() / 255
    assert float((ours - expected).abs().max()) <= 0.02
    assert len(calls) == 36 and all(128 <= 8 * side <= 512 for _, shape in calls for side in shape[2:])


def test_hires_fix_is_base_upscale_then_tiled_image_to_image(export):
    pipe = ResAdapterPipeline.from_artifacts(export)
    kwargs = dict(num_inference_steps=2, seed=5, scheduler="ddim")
    calls = recording(pipe)
    out = HiresFix(pipe, 2.5, 0.6)("a castle", width=512, height=256, tile_size=512, tile_stride=384, **kwargs)
    assert out.images[0].size == (1280, 640) and out.parameters["hires_scale"] == 2.5 and out.parameters["tiles"] == 6
    base = pipe("a castle", width=512, height=256, **kwargs).images[0].resize((1280, 640), Image.LANCZOS)
    again = pipe("a castle", width=1280, height=640, image=base, strength=0.6, tile_size=512, tile_stride=384, **kwargs)
    assert np.array_equal(pixels(out.images), pixels(again.images))
    assert {name for name, _ in calls} == {"unet", "vae_decoder", "vae_encoder"}
    assert all(128 <= side <= 1024 for name, shape in calls for side in pixel_sides(name, shape))
    with pytest.raises(ResAdapterRTError, match=r"^the hires fix makes one image per call"):
        HiresFix(pipe, 2.0)("a castle", width=256, height=256, num_images_per_prompt=2)


# -- what each window's UNet call gets (SDXL micro-conditioning, ControlNet crops, per-sample inputs) -----------------
class EchoUNet:
    """Returns 2 x its sample and records every call's inputs."""

    input_names = ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids", "controlnet_cond",
                   "controlnet_scale", "resadapter_alpha")

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **inputs):
        self.calls.append(inputs)
        return {"out_sample": 2 * inputs["sample"]}


def test_each_window_gets_its_crop_time_ids_and_control_image():
    from resadapter_rt.runtime.tiling import TiledUNet, TilePlan

    windows = plan_windows(10, 21, 8, 6, circular=True)  # 2 rows x 4 columns, the last column wrapping
    plan = TilePlan(tile=64, stride=48, circular=True, per_call=3, canvas=(10, 21), windows=tuple(windows))
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 10, 21, generator=g)  # one image with its CFG pair
    control = torch.rand(1, 2, 3, 80, 168, generator=g)
    inputs = {"timestep": torch.full((2,), 500.0), "encoder_hidden_states": torch.randn(2, 7, 32, generator=g),
              "text_embeds": torch.randn(2, 16, generator=g), "time_ids": torch.tensor([[80.0, 168, 0, 0, 80, 168]] * 2),
              "controlnet_cond": control, "controlnet_scale": torch.tensor([0.5]), "resadapter_alpha": torch.tensor(0.7)}
    unet = EchoUNet()
    out = TiledUNet(unet, plan, sdxl=True)(sample=sample, **inputs)["out_sample"]
    assert torch.allclose(out, 2 * sample, atol=1e-6)  # every pixel covered, overlaps averaged
    assert [c["sample"].shape[0] for c in unet.calls] == [6, 6, 4]  # 3 windows per call, 2 in the last
    index = 0
    for call in unet.calls:
        for i in range(call["sample"].shape[0] // 2):
            w = windows[index]
            rows = slice(2 * i, 2 * i + 2)
            assert call["time_ids"][rows].tolist() == [[80.0, 168.0, 8.0 * w.top, 8.0 * w.left, 64.0, 64.0]] * 2
            expected = torch.roll(control, -8 * w.left, dims=4)[..., 8 * w.top:8 * w.top + 64, :64]
            assert torch.equal(call["controlnet_cond"][:, rows], expected)
            assert torch.equal(call["encoder_hidden_states"][rows], inputs["encoder_hidden_states"])
            assert torch.equal(call["text_embeds"][rows], inputs["text_embeds"])
            index += 1
        assert call["resadapter_alpha"] is inputs["resadapter_alpha"] and call["controlnet_scale"] is inputs["controlnet_scale"]
    assert index == len(windows) == 8


def test_sdxl_with_a_controlnet_in_windows():
    """One window is plain generation (same crop time_ids, whole control image); 2048x512 in 512 px windows keeps every
    call inside SDXL's 256-1536 px."""
    from controlnet_fixtures import noise_image, shared_sdxl_controlnet_export

    export, _ = shared_sdxl_controlnet_export()
    pipe = ResAdapterPipeline.from_artifacts(export)
    kwargs = dict(num_inference_steps=2, seed=1, guidance_scale=5.0, scheduler="euler")
    plain = pipe("a street", width=392, height=264, control_image=[noise_image(300, 200, 3)], **kwargs)
    single = pipe("a street", width=392, height=264, control_image=[noise_image(300, 200, 3)], tile_size=392, **kwargs)
    assert single.parameters["tiles"] == 1 and torch.equal(single.latents, plain.latents)
    calls = recording(pipe, ("unet", "vae_decoder"))
    wide = pipe("a street", width=2048, height=512, control_image=[noise_image(900, 200, 4)], tile_size=512, tile_stride=384,
                **kwargs)
    assert wide.images[0].size == (2048, 512) and wide.parameters["tiles"] == 5 and wide.alpha == auto_alpha(512, 512, 1024)
    assert all(256 <= side <= 1536 for name, shape in calls for side in pixel_sides(name, shape))


def test_generate_cli_tiles_a_canvas_beyond_the_range(export, tmp_path):
    out = tmp_path / "pano.png"
    assert main(["generate", "--artifacts", str(export), "--prompt", "a city", "--width", "1088", "--height", "128", "--steps", "1",
                 "--tile-size", "128", "--tile-stride", "96", "--circular", "-q", "-o", str(out)]) == 0
    params = json.loads(Image.open(out).text["parameters"])
    assert Image.open(out).size == (1088, 128) and params["width"] == 1088 and params["resadapter_alpha"] == 1.0
    assert (params["tile_size"], params["tile_stride"], params["circular"], params["tiles"]) == (128, 96, True, 12)


def test_hires_fix_bad_input_is_refused_before_generating(pipe):
    with pytest.raises(ResAdapterRTError, match=r"^hires strength 0.5 with 1 second-pass steps leaves no denoising step; "
                                                r"raise --hires-strength or --hires-steps$"):
        HiresFix(pipe, 2.0, 0.5)("a castle", width=256, height=128, num_inference_steps=1)
    with pytest.raises(ResAdapterRTError, match=r"^hires strength must be in \(0, 1\], got 1.5; e.g. 0.5$"):
        HiresFix(pipe, 2.0, 1.5)
    with pytest.raises(ResAdapterRTError, match=r"^hires steps must be a positive integer, got 0$"):
        HiresFix(pipe, 2.0, 0.5, 0)
    with pytest.raises(ResAdapterRTError, match=r"^the hires fix starts from text; drop the source image/mask"):
        HiresFix(pipe, 2.0)("a castle", width=256, height=128, image=Image.new("RGB", (256, 128)))


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_every_backend_tiles_alike(export, pipe, backend):
    """The tiling wraps any backend's runners: torch and OpenVINO (fp32) give ONNX Runtime's tiled latents."""
    other = ResAdapterPipeline.from_artifacts(export, backend=backend, **({"cpu_precision": "fp32"} if backend == "openvino" else {}))
    kwargs = dict(height=256, width=1152, num_inference_steps=2, seed=4, tile_size=256, tile_stride=192, circular=True,
                  output_type="latent")
    expected = pipe("a harbour", **kwargs)
    assert other("a harbour", **kwargs).latents.sub(expected.latents).abs().max() <= 1e-3


def test_engine_profiles_bound_the_windows_and_their_batch(export):
    """With engine profiles (as TensorRT runs them: here on ONNX Runtime runners), windows are batched up to the profile's
    batch range and the errors name the profiles."""
    from resadapter_rt.engines.profiles import ResolutionProfile

    pipe = ResAdapterPipeline.from_artifacts(export)
    pipe.profiles = [ResolutionProfile.parse("512-1024,batch=1-2")]
    described = pipe.profiles[0].describe()
    with pytest.raises(ResAdapterRTError) as info:
        pipe("a city", width=2048, height=512, num_inference_steps=1)
    assert str(info.value).endswith(f"({described}); build one that covers it, e.g. `resadapter-rt build ... --profile "
                                    "512-2048,opt=2048x512 --profile <existing specs>`, or generate it in tiles: "
                                    "--tile-size 1024 --tile-stride 768")
    with pytest.raises(ResAdapterRTError, match=r"^tiles of 384x384 px \(batch 1\) are outside what the UNet covers \("):
        pipe("a city", width=2048, height=512, num_inference_steps=1, tile_size=384)
    with pytest.raises(ResAdapterRTError, match=r"^tile batch 3 x 1 image\(s\) is more than the engine profiles' batch range "
                                                r"allows at 512x512 \(at most 2\); use --tile-batch 2$"):
        pipe("a city", width=2048, height=512, num_inference_steps=1, tile_size=512, tile_batch=3)
    calls = recording(pipe, ("unet",))
    out = pipe("a city", width=1536, height=512, num_inference_steps=1, tile_size=512, output_type="latent")
    assert out.parameters["tiles"] == 3 and [shape[0] for _, shape in calls] == [4, 2]  # 2 windows x CFG, then 1
