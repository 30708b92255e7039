"""Prompt weighting: A1111 and compel syntax, embeddings computed by compel over the backends' text encoders.

The reference is diffusers' own pipeline built from the same tiny model's PyTorch components, given the
``prompt_embeds`` / ``negative_prompt_embeds`` (and SDXL pooled) that compel computes with the PyTorch
text encoders, configured as ``compel_encoders.py`` documents (no truncation, 75-token chunks,
``DownweightMode.REMOVE``).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_harness import assert_one_line_error, run_main
from conftest import quiet
from resadapter_rt import ResAdapterRTError, load_adapter, load_components, merge_pipeline
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.export.specs import TextEncoderForExport, text_encoder_spec
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.compel_encoders import RunnerTextEncoder, compel_for
from resadapter_rt.runtime.prompt_weighting import parse_a1111, parse_prompt
from resadapter_rt.runtime.runners import TorchRunner
from resadapter_rt.runtime.schedulers import make_scheduler

compel = pytest.importorskip("compel")
from compel import Compel, DownweightMode, ReturnedEmbeddingsType  # noqa: E402
from compel.embeddings_provider import SplitLongTextMode  # noqa: E402

# up-weighting, nesting, down-weighting; FOX_COMPEL is the same prompt in compel's syntax, written by hand
FOX = "a ((red fox:1.5)), tall grass, [(blurry sky:0.3)]"
FOX_COMPEL = "a ((red fox)1.5)++, tall grass, (blurry sky)0.2727272727272727"
FOX_PLAIN = "a red fox, tall grass, blurry sky"
# the tiny tokenizer is byte-level ("cat" is 3 tokens): 141 tokens, two 75-token chunks, weights in both
LONG = "(" + " ".join(["cat"] * 22) + ":1.4) on a mat [dog dog dog] " + " ".join(["bird"] * 15)
# 129 tokens; without its down-weighted tail only 72 (one chunk)
LONG_TAIL = "(" + " ".join(["cat"] * 22) + ":1.4) on a mat " + "[" + " ".join(["dog"] * 19) + "]"
COMMON = dict(truncate_long_prompts=False, downweight_mode=DownweightMode.REMOVE, split_long_text_mode=SplitLongTextMode.BRUTAL)
RUN = dict(num_inference_steps=3, guidance_scale=10.0, seed=7, scheduler="euler", resadapter_alpha=1.0)


@pytest.mark.parametrize("prompt,segments", [
    ("a cat", [[("a cat", 1.0)]]),
    ("(masterpiece:1.2), best quality, [blurry]", [[("masterpiece", 1.2), (", best quality, ", 1.0), ("blurry", 1 / 1.1)]]),
    ("((a)) b", [[("a", 1.1 * 1.1), (" b", 1.0)]]),
    ("((a:1.2))", [[("a", 1.2 * 1.1)]]),
    ("[(a)]", [[("a", 1.0)]]),
    ("( a : 0.5 ) b", [[(" a ", 0.5), (" b", 1.0)]]),
    ("(style: anime)", [[("style: anime", 1.1)]]),
    (r"a \(cat\) \[x\] \\ y", [[(r"a (cat) [x] \ y", 1.0)]]),
    ("a BREAK b (c BREAK d)", [[("a", 1.0)], [("b ", 1.0), ("c", 1.1)], [("d", 1.1)]]),
    ("", [[("", 1.0)]]),
])
def test_a1111_syntax_becomes_weighted_fragments(prompt, segments):
    assert parse_a1111(prompt) == tuple(tuple(s) for s in segments)


@pytest.mark.parametrize("prompt,message", [
    ("a (cat", "a1111 prompt weighting: '(' at column 3 ('a (cat') is never closed; close it with ')' or write \\( for the "
               "character itself (prompt weighting none reads a prompt as plain text)"),
    ("a cat) on", "a1111 prompt weighting: unmatched ')' at column 6 ('a cat) on'); remove it or write \\) for the "
                  "character itself (prompt weighting none reads a prompt as plain text)"),
    ("(a]", "a1111 prompt weighting: ']' at column 3 ('(a]') closes '(' opened at column 1; close that one with ')' first"),
    ("(a:1.2x)", "a1111 prompt weighting: weight '1.2x' at column 4 ('(a:1.2x)') is not a number; write e.g. (text:1.2)"),
    ("(a:1.2.3)", "weight '1.2.3' at column 4 ('(a:1.2.3)') is not a number"),
    ("(a:-1)", "weight -1 at column 4 ('(a:-1)') is negative; use a weight >= 0, e.g. (text:0.8)"),
    ("(a:)", "':' at column 3 ('(a:)') has no weight after it; write e.g. (text:1.2)"),
    ("[a:b:0.5]", "':' inside [...] at column 3 ('[a:b:0.5]') is A1111 prompt editing ([from:to:when]), which is not supported"),
    ("<lora:x:0.8> a", "<lora:x:0.8> at column 1 ('<lora:x:0.8>') is an A1111 extra-network tag, which is not applied here"),
])
def test_bad_a1111_syntax_is_one_line_naming_the_column(prompt, message):
    with pytest.raises(ResAdapterRTError) as caught:
        parse_prompt(prompt, "a1111")
    assert message in str(caught.value)


@pytest.mark.parametrize("prompt,message", [
    ("a (cat", "compel prompt weighting: '(' at column 3 ('a (cat') is never closed"),
    ("a cat)1.2", "compel prompt weighting: unmatched ')' at column 6"),
    ("a (cat:1.2)", "compel prompt weighting: (cat:1.2) at column 3 ('a (cat:1.2)') is A1111 syntax; use --prompt-weighting "
                    "a1111, or write compel's (text)1.2"),
    ("a cat.swap(dog)", "compel's .swap() (cross-attention control) is not supported"),
])
def test_bad_compel_syntax_is_one_line(prompt, message):
    with pytest.raises(ResAdapterRTError) as caught:
        parse_prompt(prompt, "compel")
    assert message in str(caught.value)


def test_which_prompts_carry_weights():
    assert parse_prompt("a cat, best quality", "a1111").plain == "a cat, best quality"
    assert parse_prompt(r"a \(cat\)", "a1111").plain == "a (cat)"
    assert parse_prompt("a (cat)", "a1111").plain is None and parse_prompt("a BREAK b", "a1111").plain is None
    assert parse_prompt("a cat,best", "compel").plain == "a cat,best"  # kept as written (compel would add a space)
    assert parse_prompt("a cat++", "compel").plain is None and parse_prompt('("a", "b").and()', "compel").plain is None
    assert parse_prompt("a (cat)", "none").plain == "a (cat)"
    with pytest.raises(ResAdapterRTError, match=r"^unknown prompt weighting 'A1111'; choose one of a1111, compel, none$"):
        parse_prompt("a", "A1111")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_compel_over_a_runner_equals_compel_over_the_pytorch_encoder(family):
    """The adapter gives compel what transformers' CLIP models give it: hidden states, pooled, projected."""
    parts = load_components(f"tiny-{family}")
    names = ["text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    embeddings = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if family == "sdxl" else \
        ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
    for index, name in enumerate(names):
        encoder, tokenizer = getattr(parts, name), getattr(parts, ("tokenizer", "tokenizer_2")[index])
        spec = text_encoder_spec(name, encoder, all_hidden_states=family == "sdxl")
        runner = TorchRunner(TextEncoderForExport(encoder, family == "sdxl", projected=index == 1), spec.inputs, spec.outputs)
        ours = compel_for(tokenizer, RunnerTextEncoder(runner, index == 1, "cpu"), family == "sdxl")
        reference = Compel(tokenizer=tokenizer, text_encoder=encoder, returned_embeddings_type=embeddings,
                           requires_pooled=index == 1, device="cpu", **COMMON)
        conjunction = parse_prompt(LONG, "a1111").compel_conjunction()
        got = ours.build_conditioning_tensor_for_conjunction(conjunction)[0]
        expected = reference.build_conditioning_tensor_for_conjunction(conjunction)[0]
        assert got.shape == expected.shape == (1, 2 * 77, encoder.config.hidden_size)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        plain = reference.build_conditioning_tensor(LONG.replace("(", "").replace(":1.4)", "").replace("[", "").replace("]", ""))
        plain = plain[0] if isinstance(plain, tuple) else plain
        assert float((expected - plain).abs().max()) > 1e-2  # the weights are applied
        if index == 1:  # SDXL's pooled embedding: text_embeds of the projected encoder
            pooled = ours.conditioning_provider.get_pooled_embeddings([FOX_COMPEL])
            torch.testing.assert_close(pooled, reference.build_conditioning_tensor(FOX_COMPEL)[1], atol=1e-5, rtol=0)


def test_down_weighting_a_long_prompts_tail_keeps_its_chunks():
    """compel 2.5.1 fails when removing a down-weighted fragment leaves fewer chunks; here the rest is padded with
    empty chunks, so weight -> 0 gives the prompt without the fragment (then the encoding of "")."""
    parts = load_components("tiny-sd15")
    vanilla = Compel(tokenizer=parts.tokenizer, text_encoder=parts.text_encoder, device="cpu", **COMMON)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        vanilla.build_conditioning_tensor_for_conjunction(parse_prompt(LONG_TAIL, "a1111").compel_conjunction())
    ours = compel_for(parts.tokenizer, parts.text_encoder, sdxl=False)
    head = LONG_TAIL[:LONG_TAIL.index("[")]
    with torch.no_grad():
        gone = ours.build_conditioning_tensor_for_conjunction(parse_prompt(head + "(" + " ".join(["dog"] * 19) + ":0)", "a1111").compel_conjunction())[0]
        without = ours.build_conditioning_tensor_for_conjunction(parse_prompt(head, "a1111").compel_conjunction())[0]
        half = ours.build_conditioning_tensor_for_conjunction(parse_prompt(LONG_TAIL, "a1111").compel_conjunction())[0]
    assert gone.shape == half.shape == (1, 154, 32) and without.shape == (1, 77, 32)
    torch.testing.assert_close(gone[:, :77], without, atol=1e-3, rtol=0)
    torch.testing.assert_close(gone[:, 77:], ours.conditioning_provider.empty_z, atol=1e-3, rtol=0)
    assert float((half - gone).abs().max()) > 1e-2


# -- whole images, against diffusers given compel's embeddings ----------------------------------------------------


def export_of(tmp_path_factory, family: str):
    """A dynamic-alpha tiny export, shared by the modules of a test process that ask for the same one."""
    root = tmp_path_factory.getbasetemp() / ("serve-tiny-sd15" if family == "sd15" else "tiny-sdxl-dynamic")  # sd15: serving's
    if not (root / "manifest.json").is_file():
        export_pipeline(ExportOptions(model=f"tiny-{family}", resadapter=f"tiny-{family}", alpha="dynamic",
                                      validation_sizes=((128, 128, 1),) if family == "sd15" else ((256, 256, 1),)),
                        root, progress=quiet)
    return root


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return export_of(tmp_path_factory, "sd15")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return export_of(tmp_path_factory, "sdxl")


@functools.cache
def reference_pipeline(family: str):
    parts = load_components(f"tiny-{family}")
    merged = merge_pipeline(parts, load_adapter(f"tiny-{family}"), 1.0)
    return merged.to_diffusers(make_scheduler(RUN["scheduler"], dict(parts.scheduler.config)))


def reference_embeddings(pipe, prompt: str, syntax: str):
    """compel over the PyTorch encoders: ``compel(prompt)`` for compel syntax; for A1111, compel's embeddings of the
    parsed fragments and the pooled embedding of the text without its syntax."""
    sdxl = hasattr(pipe, "text_encoder_2")
    embeddings = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if sdxl else \
        ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
    encoders = [(pipe.tokenizer, pipe.text_encoder)] + ([(pipe.tokenizer_2, pipe.text_encoder_2)] if sdxl else [])
    hidden, pooled = [], None
    for index, (tokenizer, encoder) in enumerate(encoders):
        ours = Compel(tokenizer=tokenizer, text_encoder=encoder, returned_embeddings_type=embeddings, requires_pooled=index == 1,
                      device="cpu", **COMMON)
        if syntax == "compel":
            out = ours(prompt)
        else:
            parsed = parse_prompt(prompt, "a1111")
            out = ours.build_conditioning_tensor_for_conjunction(parsed.compel_conjunction())[0]
            if index == 1:
                out = (out, ours.conditioning_provider.get_pooled_embeddings([parsed.pooled_text]))
        if index == 1:
            out, pooled = out
        hidden.append(out)
    return hidden, pooled, encoders


def diffusers_image(family: str, prompt: str, negative: str, syntax: str, width: int, height: int) -> np.ndarray:
    """diffusers' pipeline given compel's prompt_embeds / negative_prompt_embeds (and pooled): [H, W, 3] in [0, 1]."""
    pipe = reference_pipeline(family)
    with torch.no_grad():
        positive, pooled, _ = reference_embeddings(pipe, prompt, syntax)
        negative_hidden, negative_pooled, _ = reference_embeddings(pipe, negative, syntax)
        columns = []
        for index, (p, n) in enumerate(zip(positive, negative_hidden)):
            padder = Compel(tokenizer=(pipe.tokenizer, getattr(pipe, "tokenizer_2", None))[index],
                            text_encoder=(pipe.text_encoder, getattr(pipe, "text_encoder_2", None))[index],
                            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
                            if family == "sdxl" else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED, device="cpu", **COMMON)
            columns.append(padder.pad_conditioning_tensors_to_same_length([p, n]))
    kwargs = dict(prompt_embeds=torch.cat([c[0] for c in columns], -1), negative_prompt_embeds=torch.cat([c[1] for c in columns], -1))
    if family == "sdxl":
        kwargs |= dict(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
    out = pipe(height=height, width=width, num_inference_steps=RUN["num_inference_steps"], guidance_scale=RUN["guidance_scale"],
               generator=torch.Generator().manual_seed(RUN["seed"]), output_type="np", **kwargs)
    return out.images[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0


def test_sd15_weighted_image_matches_diffusers_and_unweighted_stays_bit_identical(sd15):
    pipe = ResAdapterPipeline.from_artifacts(sd15)
    size = dict(width=136, height=128)
    out = pipe(FOX, negative_prompt="(ugly:1.3), [text]", **size, **RUN)
    weighted, unweighted = pixels(out.images[0]), pixels(pipe(FOX_PLAIN, negative_prompt="ugly, text", **size, **RUN).images[0])
    expected = diffusers_image("sd15", FOX, "(ugly:1.3), [text]", "a1111", **size)
    assert weighted.shape == expected.shape == (128, 136, 3) and out.parameters["prompt_weighting"] == "a1111"
    print("sd15 a1111: max abs vs diffusers", float(np.abs(weighted - expected).max()),
          "unweighted", float(np.abs(unweighted - expected).max()))
    assert float(np.abs(weighted - expected).max()) <= 0.02
    assert float(np.abs(unweighted - expected).max()) > 0.04  # ignoring the weights would fail the parity check
    latent = dict(size, output_type="latent")
    for prompt, negative in (("a red fox, tall grass", None), ("a red fox", "blurry, text")):
        none = pipe(prompt, negative_prompt=negative, prompt_weighting="none", **latent, **RUN).latents
        for syntax in ("a1111", "compel"):
            assert torch.equal(pipe(prompt, negative_prompt=negative, prompt_weighting=syntax, **latent, **RUN).latents, none)
    # escaped brackets are the characters themselves: the same as the plain text with no weighting
    assert torch.equal(pipe(r"a \(red\) fox", **latent, **RUN).latents,
                       pipe("a (red) fox", prompt_weighting="none", **latent, **RUN).latents)


def test_generate_refuses_bad_syntax_before_opening_the_export(tmp_path, capsys):
    missing = tmp_path / "no-such-export"
    for extra, message in (
            (["--prompt", "a (cat"], "error: a1111 prompt weighting: '(' at column 3 ('a (cat') is never closed"),
            (["--prompt", "a cat", "--negative-prompt", "(ugly:1x)"], "weight '1x' at column 7"),
            (["--prompt", "a cat++)", "--prompt-weighting", "compel"], "compel prompt weighting: unmatched ')' at column 8"),
            (["--prompt", "a cat", "--prompt-weighting", "sdnext"], "unknown prompt weighting 'sdnext'; choose one of "
                                                                   "a1111, compel, none")):
        result = run_main(["generate", "--artifacts", str(missing), "--width", "128", "--height", "128", "-q",
                           "-o", str(tmp_path / "bad.png"), *extra], capsys)
        assert_one_line_error(result, message)
    assert not (tmp_path / "bad.png").exists()


def test_server_input_prompt_weighting(sd15):
    from resadapter_rt.serve.batching import prepare_request

    pipe = ResAdapterPipeline.from_artifacts(sd15)
    assert prepare_request(pipe, {"prompt": "a cat++", "prompt_weighting": "compel"}).prompt_weighting == "compel"
    assert prepare_request(pipe, {"prompt": "a (cat:1.2)"}).prompt_weighting == "a1111"
    with pytest.raises(ResAdapterRTError, match=r"^unknown prompt weighting 'bogus'"):
        prepare_request(pipe, {"prompt": "a cat", "prompt_weighting": "bogus"})
    with pytest.raises(ResAdapterRTError, match=r"is A1111 syntax; use --prompt-weighting a1111"):
        prepare_request(pipe, {"prompt": "a (cat:1.2)", "prompt_weighting": "compel"})


# -- extended tier: a long prompt, SDXL, the other backends ---------------------------------------------------------


def test_compel_syntax_image_matches_diffusers_given_compel_of_the_prompt(sd15):
    """The reference calls ``compel(prompt)`` itself (parse, fragments, blend) on the PyTorch encoder."""
    pipe = ResAdapterPipeline.from_artifacts(sd15)
    size = dict(width=136, height=128)
    image = pixels(pipe(FOX_COMPEL, negative_prompt="(ugly)1.3, (text)-", prompt_weighting="compel", **size, **RUN).images[0])
    expected = diffusers_image("sd15", FOX_COMPEL, "(ugly)1.3, (text)-", "compel", **size)
    unweighted = pixels(pipe(FOX_PLAIN, negative_prompt="ugly, text", **size, **RUN).images[0])
    print("sd15 compel: max abs vs diffusers", float(np.abs(image - expected).max()),
          "unweighted", float(np.abs(unweighted - expected).max()))
    assert float(np.abs(image - expected).max()) <= 0.02
    assert float(np.abs(unweighted - expected).max()) > 0.04


def test_generate_cli_records_the_weighting(sd15, tmp_path, capsys):
    out = tmp_path / "img.png"
    result = run_main(["generate", "--artifacts", str(sd15), "--prompt", FOX_COMPEL, "--prompt-weighting", "compel",
                       "--width", "136", "--height", "128", "--steps", "2", "-q", "-o", str(out)], capsys)
    assert result.returncode == 0, result.stderr
    parameters = json.loads(Image.open(out).text["parameters"])
    assert parameters["prompt_weighting"] == "compel" and parameters["prompt"] == FOX_COMPEL


def test_long_weighted_prompt_matches_diffusers(sd15):
    pipe = ResAdapterPipeline.from_artifacts(sd15)
    size = dict(width=128, height=128)
    image = pixels(pipe(LONG, negative_prompt="[blurry]", **size, **RUN).images[0])
    expected = diffusers_image("sd15", LONG, "[blurry]", "a1111", **size)
    plain = pixels(pipe(LONG.replace("(", "").replace(":1.4)", "").replace("[", "").replace("]", ""), negative_prompt="blurry",
                        **size, **RUN).images[0])
    print("long: max abs vs diffusers", float(np.abs(image - expected).max()), "unweighted", float(np.abs(plain - expected).max()))
    assert float(np.abs(image - expected).max()) <= 0.02
    assert float(np.abs(plain - expected).max()) > 0.02  # ignoring the weights would fail the parity check


def test_sdxl_weighted_images_match_diffusers_with_compel_embeddings(sdxl):
    pipe = ResAdapterPipeline.from_artifacts(sdxl)
    size = dict(width=264, height=256)
    unweighted = pixels(pipe(FOX_PLAIN, negative_prompt="ugly", **size, **RUN).images[0])
    for prompt, negative, syntax in ((FOX, "(ugly:1.3)", "a1111"), (FOX_COMPEL, "(ugly)1.3", "compel")):
        image = pixels(pipe(prompt, negative_prompt=negative, prompt_weighting=syntax, **size, **RUN).images[0])
        expected = diffusers_image("sdxl", prompt, negative, syntax, **size)
        print(f"sdxl {syntax}: max abs vs diffusers", float(np.abs(image - expected).max()),
              "unweighted", float(np.abs(unweighted - expected).max()))
        assert image.shape == expected.shape == (256, 264, 3)
        assert float(np.abs(image - expected).max()) <= 0.02, syntax
        assert float(np.abs(unweighted - expected).max()) > 0.02, syntax  # ignoring the weights would fail
    none = pipe(FOX_PLAIN, prompt_weighting="none", output_type="latent", **size, **RUN).latents
    assert torch.equal(pipe(FOX_PLAIN, output_type="latent", **size, **RUN).latents, none)


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_other_backends_weighted_parity_and_unweighted_bit_identity(sd15, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    options = {"cpu_precision": "fp32"} if backend == "openvino" else {"fused_group_norm": False}
    pipe = ResAdapterPipeline.from_artifacts(sd15, backend=backend, **options)
    size = dict(width=136, height=128)
    image = pixels(pipe(FOX, negative_prompt="(ugly:1.3), [text]", **size, **RUN).images[0])
    error = float(np.abs(image - diffusers_image("sd15", FOX, "(ugly:1.3), [text]", "a1111", **size)).max())
    print(f"{backend}: max abs vs diffusers", error)
    assert error <= 0.02
    latent = dict(size, output_type="latent")
    assert torch.equal(pipe("a red fox", negative_prompt="blurry", **latent, **RUN).latents,
                       pipe("a red fox", negative_prompt="blurry", prompt_weighting="none", **latent, **RUN).latents)
