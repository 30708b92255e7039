"""The paper's table in miniature: mini-sd15 with and without its ResAdapter, scored at in- and out-of-domain sizes.

    python benchmarks/miniature_effect.py [--seeds 64] [--steps 20] [--sizes 64x64,128x128,...] [--out DIR]
                                          [--update-results]

For every size and every prompt of the grammar (36), ``--seeds`` images (their initial noise drawn in
order from a generator seeded with the prompt's index: the same noise for both exports) are
generated through ONNX Runtime by the ``--resadapter none`` export (the model as it is) and by the
dynamic-alpha export with the adapter at alpha auto and at alpha 1.0, and scored: success = exactly one object of
the prompted colour. At the training size it also measures the mean absolute pixel change the adapter
causes (style preservation). Writes ``miniature_effect.json``, ``miniature_effect.png`` (success rate
per size) and ``miniature_effect_grid.png`` (one prompt's first images per size, both exports) to
``--out`` (default: a new directory under benchmarks/results/tmp/); ``--update-results`` writes them
to benchmarks/results/ instead, replacing the committed ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from resadapter_rt.bench.results import add_output_arguments, cpu_name, output_dir, write_json

REPO = Path(__file__).resolve().parents[1]
SIZES = "64x64,128x128,256x256,384x384,384x128,128x384"
GRID_IMAGES = 4
VARIANT_LABELS = {"without": "without ResAdapter (--resadapter none)", "with": "with ResAdapter, alpha auto",
                  "with_alpha_1": "with ResAdapter, alpha 1.0"}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        width, _, height = part.strip().partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise SystemExit(f"--sizes: {part!r} is not WIDTHxHEIGHT; write e.g. {SIZES}")
        sizes.append((int(width), int(height)))
    return sizes


def run_size(variants: dict, width: int, height: int, seeds: int, steps: int, guidance: float, batch: int):
    """Per variant (name -> (pipeline, alpha)): verdicts (prompt-major) and the images as uint8 arrays."""
    import torch

    from resadapter_rt.miniature.scorer import score
    from resadapter_rt.miniature.shapes import caption, vocabulary

    results = {name: {"verdicts": [], "images": [], "alphas": set()} for name in variants}
    for prompt_index, words in enumerate(vocabulary()):
        prompt = caption(*words)
        for name, (pipe, alpha) in variants.items():
            images = []
            generator = torch.Generator().manual_seed(prompt_index)  # successive chunks continue its draws
            for start in range(0, seeds, batch):
                count = min(batch, seeds - start)
                result = pipe(prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                              generator=generator, num_images_per_prompt=count, resadapter_alpha=alpha)
                images += [np.asarray(image) for image in result.images]
                results[name]["alphas"].add(result.alpha)
            results[name]["verdicts"] += [score(image, prompt) for image in images]
            results[name]["images"].append(images)
    return results


def summarize(verdicts: list) -> dict:
    counts: dict[str, int] = {}
    for verdict in verdicts:
        key = str(min(verdict.count, 3)) + ("+" if verdict.count >= 3 else "")
        counts[key] = counts.get(key, 0) + 1
    total = len(verdicts)
    return {"images": total, "success_rate": round(sum(v.success for v in verdicts) / total, 4),
            "one_object_rate": round(sum(v.count == 1 for v in verdicts) / total, 4),
            "colour_ok_rate": round(sum(v.colour_ok for v in verdicts) / total, 4),
            "object_counts": dict(sorted(counts.items()))}


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [f"{r['width']}x{r['height']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, (key, label) in zip((-0.27, 0, 0.27), VARIANT_LABELS.items()):
        ax.bar(x + offset, [100 * r[key]["success_rate"] for r in rows], 0.27, label=label)
    ax.set_xticks(x, labels)
    ax.set_ylabel("success rate, % (one object, prompted colour)")
    ax.set_ylim(0, 100)
    ax.set_title("mini-sd15 (trained at 128x128 only)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def grid(examples: list[tuple[int, int, list, list]], path: Path) -> None:
    """Per size one block: a row of images without, a row with the adapter (alpha auto)."""
    from PIL import Image

    cell = max(max(w, h) for w, h, _, _ in examples)
    pad = 6
    width = len(examples) * (GRID_IMAGES * (cell // 2 + pad)) + pad
    canvas = Image.new("RGB", (width, 2 * (cell // 2 + pad) + pad), (128, 128, 128))
    x = pad
    for w, h, without, with_adapter in examples:
        scale = (cell // 2) / max(w, h)
        for row, images in enumerate((without, with_adapter)):
            for i, array in enumerate(images[:GRID_IMAGES]):
                image = Image.fromarray(array).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)
                canvas.paste(image, (x + i * (cell // 2 + pad), pad + row * (cell // 2 + pad)))
        x += GRID_IMAGES * (cell // 2 + pad)
    canvas.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=64, help="images per prompt and size (default 64)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, help="default: the demo's")
    parser.add_argument("--sizes", default=SIZES)
    parser.add_argument("--batch", type=int, default=32, help="images per pipeline call")
    parser.add_argument("--artifacts", default=str(REPO / "export" / "mini-sd15-demo"), help="the demo's export root")
    add_output_arguments(parser)
    args = parser.parse_args()
    sizes = parse_sizes(args.sizes)

    from resadapter_rt.miniature import DEMO_GUIDANCE
    from resadapter_rt.miniature.demo import ensure_exports
    from resadapter_rt.models.mini import TRAINING_SIZE
    from resadapter_rt.runtime.pipeline import ResAdapterPipeline

    guidance = DEMO_GUIDANCE if args.guidance is None else args.guidance
    out = output_dir(args, "miniature_effect")
    exports = ensure_exports(Path(args.artifacts), print, lambda m: None)
    plain, adapted = (ResAdapterPipeline.from_artifacts(exports[name]) for name in ("model", "resadapter"))
    variants = {"without": (plain, "auto"), "with": (adapted, "auto"), "with_alpha_1": (adapted, 1.0)}
    rows, examples = [], []
    began = time.perf_counter()
    for width, height in sizes:
        start = time.perf_counter()
        results = run_size(variants, width, height, args.seeds, args.steps, guidance, args.batch)
        row = {"width": width, "height": height, "in_domain": (width, height) == (TRAINING_SIZE, TRAINING_SIZE),
               "alpha": sorted(results["with"]["alphas"])[0],
               **{name: summarize(results[name]["verdicts"]) for name in variants},
               "seconds": round(time.perf_counter() - start, 1)}
        if row["in_domain"]:
            without = np.concatenate([np.stack(i) for i in results["without"]["images"]]).astype(np.float64)
            with_adapter = np.concatenate([np.stack(i) for i in results["with"]["images"]]).astype(np.float64)
            row["mean_abs_pixel_change"] = round(float(np.abs(without - with_adapter).mean() / 255), 5)
        rows.append(row)
        examples.append((width, height, results["without"]["images"][0], results["with"]["images"][0]))
        change = f", mean |pixel change| {row['mean_abs_pixel_change']:.4f}" if "mean_abs_pixel_change" in row else ""
        print(f"{width}x{height}: success without {row['without']['success_rate']:.1%}, with {row['with']['success_rate']:.1%} "
              f"(alpha auto = {row['alpha']:g}), with at alpha 1 {row['with_alpha_1']['success_rate']:.1%}{change} "
              f"[{row['seconds']:.0f} s]", flush=True)
    record = {"benchmark": "miniature_effect", "model": "mini-sd15", "backend": "onnxruntime (CPU)",
              "cpu": cpu_name(), "seeds_per_prompt": args.seeds, "prompts": 36, "steps": args.steps, "guidance": guidance,
              "scheduler": "model (Euler)", "variants": VARIANT_LABELS, "seconds": round(time.perf_counter() - began, 1), "rows": rows}
    write_json(out / "miniature_effect.json", record, indent=1)
    plotted = plot(rows, out / "miniature_effect.png")
    grid(examples, out / "miniature_effect_grid.png")
    print(f"wrote {out / 'miniature_effect.json'}{', the plot' if plotted else ''} and the grid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
