"""Long prompts (75-token chunks, A1111/compel convention) and the model's own scheduler as the default."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from conftest import quiet
from resadapter_rt import ResAdapterRTError, load_adapter, load_components, merge_pipeline
from resadapter_rt.cli import main
from resadapter_rt.engines.profiles import ResolutionProfile
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.models.families import SD15, SDXL
from resadapter_rt.models.tiny import tiny_pipeline_dir
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.prompts import chunked_token_ids, chunks_needed
from resadapter_rt.runtime.schedulers import make_scheduler

# The tiny tokenizer is byte-level: "cat" is 3 tokens, so FIRST_75 is exactly 75 tokens and LONG 201.
FIRST_75 = " ".join(["cat"] * 25)
LONG = FIRST_75 + " " + " ".join(["dog"] * 42)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    for family in ("sd15", "sdxl"):
        export_pipeline(ExportOptions(model=f"tiny-{family}", resadapter=f"tiny-{family}", alpha=1.0,
                                      validation_sizes=((256, 256, 1),)), root / family, progress=quiet)
    return root


def reference_chunks(directory, family: str, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states encoded chunk by chunk with the PyTorch text encoder(s), ids built by hand."""
    parts = [("tokenizer", "text_encoder", CLIPTextModel)]
    if family == "sdxl":
        parts.append(("tokenizer_2", "text_encoder_2", CLIPTextModelWithProjection))
    hidden, pooled = [], None
    for tokenizer_dir, encoder_dir, encoder_class in parts:
        tokenizer = CLIPTokenizer.from_pretrained(directory / tokenizer_dir)
        encoder = encoder_class.from_pretrained(directory / encoder_dir).eval()
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        pieces = []
        for start in range(0, len(ids), 75):
            chunk = ids[start:start + 75]
            row = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (75 - len(chunk))
            with torch.no_grad():
                out = encoder(torch.tensor([row]), output_hidden_states=True)
            pieces.append(out.hidden_states[-2] if family == "sdxl" else out.last_hidden_state)
            if encoder_dir == "text_encoder_2" and pooled is None:
                pooled = out.text_embeds
        hidden.append(torch.cat(pieces, dim=1))
    return torch.cat(hidden, dim=-1), pooled


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_chunked_prompt_matches_text_encoder_chunk_by_chunk(exports, family):
    pipe = ResAdapterPipeline.from_artifacts(exports / family)
    embeds, pooled = pipe._encode([LONG], None, cfg=False)
    expected, expected_pooled = reference_chunks(tiny_pipeline_dir(SD15 if family == "sd15" else SDXL), family, LONG)
    assert embeds.shape == expected.shape == (1, 3 * 77, expected.shape[-1])
    assert float((embeds - expected).abs().max()) <= 1e-4
    if family == "sdxl":  # pooled from the first chunk
        assert float((pooled - expected_pooled).abs().max()) <= 1e-4


def test_positive_and_negative_get_the_same_number_of_chunks(exports):
    pipe = ResAdapterPipeline.from_artifacts(exports / "sd15")
    embeds, _ = pipe._encode([LONG], ["blurry"], cfg=True)
    assert embeds.shape[:2] == (2, 3 * 77)
    short, _ = pipe._encode(["blurry"], None, cfg=False)
    empty, _ = pipe._encode([""], None, cfg=False)
    assert torch.equal(embeds[0, :77], short[0])  # the negative's first chunk is its plain encoding
    assert torch.equal(embeds[0, 77:154], empty[0]) and torch.equal(embeds[0, 154:], empty[0])  # then empty chunks


def test_200_token_prompt_changes_the_output_beyond_its_first_75_tokens(exports):
    pipe = ResAdapterPipeline.from_artifacts(exports / "sd15", backend="torch")
    tokenizer = pipe.tokenizers[0]
    assert len(tokenizer(LONG, add_special_tokens=False).input_ids) == 201
    assert tokenizer(LONG, add_special_tokens=False).input_ids[:75] == tokenizer(FIRST_75, add_special_tokens=False).input_ids
    run = dict(height=200, width=328, num_inference_steps=3, guidance_scale=5.0, seed=2, output_type="latent")
    long, first = pipe(LONG, **run).latents, pipe(FIRST_75, **run).latents
    assert float((long - first).abs().max()) > 1e-2


def test_prompts_up_to_75_tokens_are_bit_identical_to_single_sequence_encoding(exports):
    pipe = ResAdapterPipeline.from_artifacts(exports / "sdxl")
    for tokenizer in pipe.tokenizers:
        assert chunks_needed([tokenizer], [FIRST_75, "a red fox"]) == 1
        plain = tokenizer([FIRST_75, "a red fox"], padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids.to(torch.int32)
        assert torch.equal(chunked_token_ids(tokenizer, [FIRST_75, "a red fox"], 1), plain)
    embeds, pooled = pipe._encode([FIRST_75], None, cfg=False)
    first = pipe.runners["text_encoder"](input_ids=plain[:1])
    assert embeds.shape[1] == 77 and torch.equal(embeds[..., :first[pipe.penultimate[0]].shape[-1]], first[pipe.penultimate[0]])
    assert chunks_needed(pipe.tokenizers, [FIRST_75 + " a"]) == 2


def test_engine_profiles_that_do_not_cover_a_long_prompt_refuse_it_in_one_line(exports):
    pipe = ResAdapterPipeline.from_artifacts(exports / "sd15")
    pipe.profiles = [ResolutionProfile.parse("256-1024")]
    with pytest.raises(ResAdapterRTError) as caught:
        pipe(LONG, height=256, width=256, num_inference_steps=1, output_type="latent")
    assert str(caught.value) == ("the prompt needs 231 tokens (3 chunks of 75) but the engine profiles cover 77-77; "
                                 "rebuild with e.g. `--profile <spec>,tokens=77-231`, or shorten the prompt")
    assert ResolutionProfile.parse("256-1024,batch=1-2,tokens=77-231").component_shapes("text_encoder", {}) == \
        {"input_ids": ((1, 77), (1, 77), (6, 77))}


@pytest.fixture(scope="module")
def dpm_model(tmp_path_factory):
    """The tiny SD1.5 pipeline whose author saved DPM++ 2M (no Karras) as its scheduler."""
    from diffusers import DPMSolverMultistepScheduler

    model = tmp_path_factory.mktemp("dpm") / "model"
    shutil.copytree(tiny_pipeline_dir(SD15), model)
    config = json.loads((model / "scheduler/scheduler_config.json").read_text())
    shutil.rmtree(model / "scheduler")
    DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2).save_pretrained(model / "scheduler")
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps(index | {"scheduler": ["diffusers", "DPMSolverMultistepScheduler"]}))
    export_pipeline(ExportOptions(model=str(model), resadapter="tiny-sd15", alpha=1.0, validation_sizes=((256, 256, 1),)),
                    model.parent / "export", progress=quiet)
    return model


def test_generate_defaults_to_the_models_own_scheduler_like_diffusers(dpm_model, tmp_path):
    export = dpm_model.parent / "export"
    assert json.loads((export / "manifest.json").read_text())["scheduler"] == {
        "class": "DPMSolverMultistepScheduler", "config": "scheduler/scheduler_config.json"}
    run = ["--prompt", "a red fox", "--width", "328", "--height", "200", "--steps", "6", "--guidance", "6", "--seed", "4", "-q"]
    assert main(["generate", "--artifacts", str(export), *run, "-o", str(tmp_path / "default.png")]) == 0
    assert main(["generate", "--artifacts", str(export), *run, "--scheduler", "dpm++2m-karras", "-o", str(tmp_path / "karras.png")]) == 0
    parts = load_components(str(dpm_model))
    reference = merge_pipeline(parts, load_adapter("tiny-sd15"), 1.0).to_diffusers()  # the model's own scheduler
    assert type(reference.scheduler).__name__ == "DPMSolverMultistepScheduler" and not reference.scheduler.config.use_karras_sigmas
    expected = reference("a red fox", height=200, width=328, num_inference_steps=6, guidance_scale=6.0,
                         generator=torch.Generator().manual_seed(4), output_type="np").images[0]
    image = Image.open(tmp_path / "default.png")
    ours = np.asarray(image, dtype=np.float64) / 255
    karras = np.asarray(Image.open(tmp_path / "karras.png"), dtype=np.float64) / 255
    assert np.abs(ours - expected).max() <= 0.02
    assert np.abs(karras - expected).max() > np.abs(ours - expected).max()  # the override really is another scheduler
    params = json.loads(image.text["parameters"])
    assert params["scheduler"] == "model" and params["scheduler_class"] == "DPMSolverMultistepScheduler"


def test_a_model_scheduler_that_is_not_a_diffusers_scheduler_is_refused():
    with pytest.raises(ResAdapterRTError) as caught:
        make_scheduler("model", {"_class_name": "os.system"})
    assert str(caught.value) == ("the model's scheduler config names 'os.system', which is not a diffusers scheduler; "
                                 "pass a named scheduler instead (dpm++2m-karras, dpm++2m, euler, euler-a, ddim, lcm)")
