"""One command for a machine with a GPU: every ``gpu``/``trt`` test, the fused GroupNorm benchmark, and the
torch CUDA backend's UNet step with and without fused GroupNorm and CUDA graphs.

On the GPU machine (the device tool carries the working tree plus ``benchmarks/wheelhouse``):
    python benchmarks/gpu_check.py [--wheelhouse benchmarks/wheelhouse] [--repeats 20]
writes ``benchmarks/results/gpu_check_<gpu>.json`` (and ``group_norm_gpu.json`` via that script) and
prints what it ran, what it skipped and why. Without a CUDA GPU it only prints what it skipped.

On a development machine, before lending: ``python benchmarks/gpu_check.py --prepare-carry`` downloads
wheels (no dependencies resolved, versions pinned to this environment) of what the project needs beyond
what GPU machines have (torch, Triton, onnx, onnxruntime, numpy) into ``benchmarks/wheelhouse`` and
checks that working tree + wheelhouse fit the 64 MiB the device tool carries.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20
# What the lent GPU machines already have (see ../shared/GPU.md); everything else travels as wheels.
ON_GPU_MACHINE = {"torch", "triton", "onnx", "onnxruntime", "numpy", "sympy", "networkx", "jinja2", "fsspec", "mpmath",
                  "markupsafe", "typing-extensions", "filelock", "protobuf", "setuptools", "pip", "wheel", "flatbuffers",
                  "coloredlogs", "humanfriendly", "packaging", "ml-dtypes"}
NEEDED = ["diffusers", "transformers", "peft", "polygraphy", "onnx-graphsurgeon", "safetensors", "huggingface-hub",
          "pillow", "tqdm", "psutil", "pytest", "onnxscript"]


def _name(requirement: str) -> str:
    return re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def wheel_closure() -> dict[str, str]:
    """NEEDED and their non-optional dependencies, as installed here, minus what GPU machines have."""
    pending, found = list(NEEDED), {}
    while pending:
        name = pending.pop()
        if name in found or name in ON_GPU_MACHINE or name.startswith("nvidia-"):
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[name] = distribution.version
        pending += [_name(r) for r in distribution.requires or [] if "extra ==" not in r]
    return found


def prepare_carry(wheelhouse: Path, python_version: str | None) -> int:
    """Download the wheels (for the GPU machine's Python, if given) and report the carry size
    (tracked + untracked files + wheelhouse)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version}" for name, version in sorted(wheel_closure().items())]
    target = ["--python-version", python_version] if python_version else []
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *target, "--dest", str(wheelhouse),
                    *pins], check=True)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    tree = sum((REPO / f).stat().st_size for f in listed if (REPO / f).is_file())
    wheels = sum(p.stat().st_size for p in wheelhouse.iterdir())
    total = tree + wheels
    print(f"carry: working tree {tree / 2**20:.1f} MiB + wheelhouse {wheels / 2**20:.1f} MiB ({len(pins)} wheels) = "
          f"{total / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB")
    return 0 if total <= CARRY_LIMIT else 1


def install_wheelhouse(wheelhouse: Path) -> Path:
    """Install the carried wheels offline into a private directory and put it on the path (ours and children's)."""
    target = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    wheels = [str(p) for p in wheelhouse.glob("*.whl")]
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(target), *wheels],
                   check=True, capture_output=True)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), str(REPO), os.environ.get("PYTHONPATH")]))
    return target


def environment() -> dict:
    import torch

    record = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
              "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        record.update(gpu=torch.cuda.get_device_name(), compute_capability=f"{major}.{minor}")
    for module in ("triton", "diffusers", "transformers", "tensorrt", "tensorrt_rtx", "onnxruntime"):
        try:
            record[module] = getattr(importlib.import_module(module), "__version__", "installed")
        except Exception as exc:  # ImportError, or OSError from a bindings wheel without its libraries
            record[module] = f"missing ({type(exc).__name__})"
    return record


def run_marked_tests(out: Path) -> dict:
    """``pytest -m "gpu or trt"``; each test's outcome, and the reason for every skip."""
    junit = out / "gpu_check_junit.xml"
    # "-o addopts=": one process, without pyproject's "-n 2" (pytest-xdist need not be on the GPU machine).
    done = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-m", "gpu or trt", "-p", "no:cacheprovider",
                           "-q", "-rs", f"--junitxml={junit}", "tests"], cwd=REPO, capture_output=True, text=True)
    cases = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome, detail = "passed", None
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome, detail = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag], element.get("message")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "detail": detail,
                      "seconds": float(case.get("time", 0))})
    junit.unlink()
    return {"exit_status": done.returncode, "summary": done.stdout.strip().splitlines()[-1:] or [done.stderr[-300:]], "tests": cases}


def run_group_norm_benchmark() -> dict:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/group_norm_gpu.py")], cwd=REPO, capture_output=True, text=True)
    result = REPO / "benchmarks/results/group_norm_gpu.json"
    return {"exit_status": done.returncode, "output_tail": (done.stdout + done.stderr)[-2000:],
            "results": str(result.relative_to(REPO)) if done.returncode == 0 and result.is_file() else None}


def unet_step_timings(sizes: list[int], repeats: int) -> list[dict]:
    """Full-size SD1.5 UNet (random weights), fp16, batch 2 (CFG): eager vs fused GroupNorm, each with and without CUDA graphs."""
    import copy

    import torch
    from diffusers import UNet2DConditionModel

    from resadapter_rt.kernels.fuse import fuse_group_norm_silu
    from resadapter_rt.bench.cuda_timing import cuda_event_times_ms
    from resadapter_rt.models.families import SD15
    from resadapter_rt.models.tiny import full_size_unet_config

    torch.manual_seed(0)
    eager = UNet2DConditionModel(**full_size_unet_config(SD15)).to("cuda", torch.float16).eval()
    fused = copy.deepcopy(eager)
    pairs = fuse_group_norm_silu(fused)
    rows = []
    for size in sizes:
        latent = size // 8
        inputs = {"sample": torch.randn(2, 4, latent, latent, device="cuda", dtype=torch.float16),
                  "timestep": torch.tensor([500.0, 500.0], device="cuda"),
                  "encoder_hidden_states": torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)}
        reference = None
        for name, unet in (("torch", eager), ("torch+fused_group_norm", fused)):
            with torch.inference_mode():
                step = lambda: unet(**inputs).sample  # noqa: E731
                output = step()
                reference = output if reference is None else reference
                error = float((output.float() - reference.float()).abs().max())
                plain = statistics.median(cuda_event_times_ms(step, repeats))
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        step()
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    step()
                graphed = statistics.median(cuda_event_times_ms(graph.replay, repeats))
            rows.append({"variant": name, "size": f"{size}x{size}", "batch": 2, "dtype": "fp16", "eager_ms": round(plain, 3),
                         "cuda_graph_ms": round(graphed, 3), "max_abs_vs_torch": error,
                         "fused_pairs": pairs if "fused" in name else 0})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-carry", action="store_true", help="download the wheelhouse here and check the carry size")
    parser.add_argument("--python-version", help="with --prepare-carry: the GPU machine's Python (X.Y), if not this one's")
    parser.add_argument("--wheelhouse", default=str(REPO / "benchmarks/wheelhouse"), help="wheels to install offline if needed")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, action="append", help="UNet step sizes in px (default 512 and 1024)")
    args = parser.parse_args()
    if args.prepare_carry:
        return prepare_carry(Path(args.wheelhouse), args.python_version)
    skipped: list[str] = []
    try:
        importlib.import_module("diffusers")
    except ImportError:
        if Path(args.wheelhouse).is_dir():
            install_wheelhouse(Path(args.wheelhouse))
        else:
            skipped.append(f"installing diffusers/transformers: no wheelhouse at {args.wheelhouse} (run --prepare-carry first)")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(REPO))
    env = environment()
    print(json.dumps(env), flush=True)
    if not env["cuda_available"]:
        skipped += ["gpu/trt tests: no CUDA GPU (torch.cuda.is_available() is False)",
                    "fused GroupNorm benchmark: no CUDA GPU", "torch CUDA UNet timings: no CUDA GPU"]
        print("skipped:\n  " + "\n  ".join(skipped))
        print("nothing written: this check needs a CUDA GPU")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"check": "gpu_check", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "environment": env}
    record["tests"] = run_marked_tests(out)
    skipped += [f"{t['test']}: {t['detail']}" for t in record["tests"]["tests"] if t["outcome"] == "skipped"]
    record["group_norm_benchmark"] = run_group_norm_benchmark()
    if env["diffusers"].startswith("missing"):
        skipped.append("torch CUDA UNet timings: diffusers is not importable")
    else:
        record["unet_step"] = unet_step_timings(args.size or [512, 1024], args.repeats)
    record["skipped"] = skipped
    slug = re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-")
    path = out / f"gpu_check_{slug}.json"
    path.write_text(json.dumps(record, indent=2))
    failed = [t["test"] for t in record["tests"]["tests"] if t["outcome"] in ("failed", "error")]
    print(f"tests: {sum(t['outcome'] == 'passed' for t in record['tests']['tests'])} passed, {len(failed)} failed, "
          f"{sum(t['outcome'] == 'skipped' for t in record['tests']['tests'])} skipped")
    print("skipped:\n  " + "\n  ".join(skipped or ["nothing"]))
    print(f"wrote {path}")
    return 1 if failed or record["group_norm_benchmark"]["exit_status"] else 0


if __name__ == "__main__":
    sys.exit(main())
