"""Prompt weighting's cost per request: the text-encoding stage with and without weights, side by side (ONNX Runtime, CPU).

    python benchmarks/prompt_weighting_cost.py [--repeats 9] [--no-full-size] [--out DIR | --update-results]

Times ``ResAdapterPipeline.encode`` (stage 2: a prompt and a negative prompt, classifier-free guidance) for the
same prompt pair unweighted with ``prompt_weighting="none"`` (the baseline), unweighted with the default ``a1111``
(parsed, then the plain encoding), with A1111 up-weights only, with up- and down-weights (compel encodes the prompt
again without each down-weighted fragment), in compel's syntax, and a two-chunk prompt with and without weights.
Cases run interleaved, ``--repeats`` rounds after one warm-up each; medians and the ratio to the baseline go to
prompt_weighting_cost.json. Models: tiny-sd15 (a whole export) and, unless --no-full-size, a full-size SD1.5
text encoder (CLIP ViT-L/14 text layout, 123 M parameters, random weights) exported to ONNX with the exporter's
own wrapper and driven through the same pipeline stage (its UNet and VAE are not needed to encode).
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces
benchmarks/results/prompt_weighting_cost.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

PLAIN = ("masterpiece, best quality, a red fox in tall grass, blurry sky", "ugly, text")
CASES = {  # name -> (prompt, negative, syntax)
    "none": (*PLAIN, "none"),
    "a1111, no weights": (*PLAIN, "a1111"),
    "a1111, up-weights": ("(masterpiece:1.2), best quality, a (red fox:1.3) in tall grass, blurry sky", "(ugly:1.3), text", "a1111"),
    "a1111, up and down": ("(masterpiece:1.2), best quality, a (red fox:1.3) in tall grass, [blurry sky]", "(ugly:1.3), [text]",
                           "a1111"),
    "compel, up and down": ("(masterpiece)1.2, best quality, a (red fox)1.3 in tall grass, (blurry sky)0.9", "(ugly)1.3, (text)0.9",
                            "compel"),
    "long, none": (", ".join([PLAIN[0]] * 2), PLAIN[1], "none"),
    "long, a1111 up and down": (", ".join(["(masterpiece:1.2), best quality, a (red fox:1.3) in tall grass, [blurry sky]"] * 2),
                                "(ugly:1.3), [text]", "a1111"),
}


class NoNetwork:
    """Stands in for the UNet and VAE of a text-encoder-only pipeline (the encode stage never calls them)."""

    input_names: tuple[str, ...] = ()


def full_size_pipeline(directory: Path):
    """The pipeline's encode stage over a full-size SD1.5 text encoder's ONNX graph (random weights)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from resadapter_rt.export.specs import TextEncoderForExport, text_encoder_spec
    from resadapter_rt.models.families import SD15
    from resadapter_rt.models.tiny import tiny_pipeline_dir
    from resadapter_rt.pipeline import ResAdapterPipeline
    from resadapter_rt.runtime.runners import OnnxRuntimeRunner

    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")).eval()
    spec = text_encoder_spec("text_encoder", encoder, all_hidden_states=False)
    path = directory / "text_encoder.onnx"
    with torch.no_grad():
        torch.onnx.export(TextEncoderForExport(encoder, False, False), (spec.example(1)["input_ids"],), str(path), dynamo=False,
                          opset_version=17, input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes=spec.dynamic_axes)
    parameters = sum(p.numel() for p in encoder.parameters())
    runners = {"text_encoder": OnnxRuntimeRunner(path, ["CPUExecutionProvider"]), "unet": NoNetwork(), "vae_decoder": NoNetwork()}
    return ResAdapterPipeline(tiny_pipeline_dir(SD15), {"family": "sd15", "components": {}}, runners, "onnxruntime"), parameters


def tiny_pipeline(directory: Path):
    from resadapter_rt.export.exporter import ExportOptions, export_pipeline
    from resadapter_rt.pipeline import ResAdapterPipeline

    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=1.0, validation_sizes=((128, 128, 1),)),
                    directory / "tiny-sd15", progress=lambda message: None)
    return ResAdapterPipeline.from_artifacts(directory / "tiny-sd15", backend="onnxruntime")


def measure(pipe, repeats: int) -> dict:
    """Median encode-stage time per case (interleaved rounds) and its ratio to ``none``."""
    from resadapter_rt.runtime.compel_encoders import encode_prompts

    def encode(case):
        prompt, negative, syntax = CASES[case]
        start = time.perf_counter()
        embeds, _ = encode_prompts(pipe, [prompt], [negative], True, syntax)
        return time.perf_counter() - start, embeds.shape[1] // 77

    chunks = {case: encode(case)[1] for case in CASES}  # warm-up
    times: dict[str, list[float]] = {case: [] for case in CASES}
    for _ in range(repeats):
        for case in CASES:
            times[case].append(encode(case)[0])
    rows = {}
    for case, values in times.items():
        baseline = "long, none" if case.startswith("long") else "none"
        median = statistics.median(values)
        rows[case] = {"prompt": CASES[case][0], "negative_prompt": CASES[case][1], "prompt_weighting": CASES[case][2],
                      "chunks": chunks[case], "median_ms": round(1e3 * median, 3), "min_ms": round(1e3 * min(values), 3),
                      "over_" + baseline.replace(", ", "_"): round(median / statistics.median(times[baseline]), 3)}
        print(f"  {case:>26}: {rows[case]['median_ms']:8.2f} ms median ({chunks[case]} chunk(s)), "
              f"x{median / statistics.median(times[baseline]):.2f} vs {baseline}", flush=True)
    return rows


def main() -> int:
    import onnxruntime
    import torch

    from resadapter_rt.bench.results import add_output_arguments, cpu_name, output_dir, write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-full-size", action="store_true", help="only the tiny model")
    add_output_arguments(parser)
    args = parser.parse_args()
    out = output_dir(args, "prompt_weighting_cost")
    start = time.perf_counter()
    import compel  # noqa: F401  (the one-time import a process pays at its first weighted prompt)

    compel_import_s = time.perf_counter() - start
    record = {"benchmark": "prompt_weighting_cost", "what": "ResAdapterPipeline encode stage, prompt + negative with CFG",
              "backend": "onnxruntime CPUExecutionProvider", "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
              "compel": __import__("importlib.metadata").metadata.version("compel"), "machine": platform.machine(),
              "cpu": cpu_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "repeats": args.repeats,
              "load_average_1min_at_start": round(os.getloadavg()[0], 2),
              "compel_import_s_first_weighted_prompt_in_a_process": round(compel_import_s, 3), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        models = [("tiny-sd15", lambda: (tiny_pipeline(Path(tmp)), None))]
        if not args.no_full_size:
            models.append(("sd15-full-size-text-encoder", lambda: full_size_pipeline(Path(tmp))))
        for name, make in models:
            print(f"{name}:", flush=True)
            pipe, parameters = make()
            record["models"][name] = {**({"text_encoder_parameters": parameters} if parameters else {}),
                                      "tokenizer": "the tiny models' byte-level CLIP tokenizer (about one token per character)",
                                      "cases": measure(pipe, args.repeats)}
    record["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)  # other jobs on the same cores skew absolute times
    path = write_json(out / "prompt_weighting_cost.json", record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
