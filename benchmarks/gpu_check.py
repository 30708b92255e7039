"""The GPU check: one command for a lent GPU machine (H100/H200) that proves the GPU paths Hopper can run.

On the GPU machine (the device command in README.md, "GPU check", installs the carried wheels first):
    python3 benchmarks/gpu_check.py --out $OUT [--budget-s 480]
runs, each step in a child process under its own timeout and all inside the budget:

* ``tests``: ``pytest -m "gpu or trt" tests``: tests/gpu (the Triton GroupNorm kernels on CUDA tensors against
  torch, the torch CUDA backend against the CPU on the tiny models, CUDA graph replay against eager, fused
  against unfused GroupNorm) and every other gpu/trt test (the TensorRT ones skip on Hopper, with reasons);
* ``group_norm_gpu``: benchmarks/group_norm_gpu.py at 512² and 1024² (kernel vs torch per SD shape, achieved vs
  copy bandwidth, the model's time at this GPU's bandwidth);
* ``unet_step``: the full-size SD1.5 UNet step (random weights, fp16, batch 2) eager vs fused GroupNorm,
  each eager and replayed from a CUDA graph: the outputs are compared, the times recorded.

Under ``--out`` (default: a new directory under benchmarks/results/tmp/; ``--update-results``:
benchmarks/results/gpu_check_<gpu>/) it writes ``gpu_check.json`` (rewritten after every step, so a run stopped
at the device's time limit still returns what finished), one ``<step>.log`` per step, and the steps' own JSON.
Timings are measurements, never pass/fail; the exit status is 1 when any numeric check fails, a test fails or errors, or a
step crashes or times out. ``--dry-run`` (any machine) writes the plan as the JSON skeleton and exits 0.

On a development machine, before lending: ``python benchmarks/gpu_check.py --prepare-carry`` downloads into
``benchmarks/wheelhouse`` (emptied first) wheels for the lent image's Python 3.12 of what the project needs
and the image lacks (benchmarks/lent_image_packages.txt, copied from the device library's KINDS.md), checks
each wheel's tags, and prints the carry size (working tree + wheels; the device tool takes 64 MiB).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ElementTree
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as `python3 benchmarks/gpu_check.py` without PYTHONPATH
    sys.path.insert(0, str(REPO))

from resadapter_rt.bench.results import COMMITTED, add_output_arguments, output_dir, write_json  # noqa: E402
from resadapter_rt.errors import ResAdapterRTError  # noqa: E402

IMAGE_LIST = Path(__file__).with_name("lent_image_packages.txt")
CARRY_LIMIT = 64 * 2**20  # bytes the device tool carries per call: working tree + carried paths
LENT_PYTHON = (3, 12)  # the image's python3 is 3.12.3 (lent_image_packages.txt names the source)
# manylinux wheels up to glibc 2.28 (the device library's README downloads these); 3.12.3 is Ubuntu 24.04's
# Python (glibc 2.39), so this is the safe side of what the image takes.
LENT_GLIBC_MINORS = range(28, 4, -1)
TARGET_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
                  "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
                  "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
# Every gpu/trt-marked test of the suite (collected with the image's packages: modules needing what it lacks
# skip); tests/gpu holds those written for what Hopper can run.
TEST_PATHS = ["tests"]
# Per-step timeouts (s); each is cut to what is left of --budget-s.
STEP_TIMEOUTS = {"tests": 240, "group_norm_gpu": 150, "unet_step": 120}
DEFAULT_BUDGET_S = 480  # the device command's pip install + this inside 9 minutes
# The device call, exactly as README.md ("GPU check") gives it: run(command=DEVICE_COMMAND, carry=DEVICE_CARRY,
# timeout_s=DEVICE_TIMEOUT_S). pip's output stays visible; the outer timeout keeps the whole call inside 9 minutes.
DEVICE_COMMAND = ("set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD; { python3 -m pip install "
                  "--no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check --target /tmp/site "
                  "benchmarks/wheelhouse/*.whl && timeout -k 10 510 python3 benchmarks/gpu_check.py --out $OUT; } 2>&1 "
                  "| tee $OUT/check.log")
DEVICE_CARRY = ["benchmarks/wheelhouse"]
DEVICE_TIMEOUT_S = 600
UNET_GRAPH_REL_TOLERANCE = 1e-3  # CUDA graph replay vs eager, same module: the same kernels
UNET_FUSED_REL_TOLERANCE = 2e-2  # fused vs torch GroupNorm, fp16 through a full-size UNet


class CarryError(Exception):
    """A wheel that cannot be carried; the message names the package."""


# ----------------------------------------------------------------------------- the carry (development machine)

def read_image_list(path: Path = IMAGE_LIST) -> dict[str, str | None]:
    """The lent image's distributions: canonical name -> version (None where the source gives none)."""
    from packaging.utils import canonicalize_name

    packages: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            packages[canonicalize_name(name)] = version or None
    return packages


def lent_platforms() -> list[str]:
    """Platform tags the lent image's pip accepts that this check downloads for (newest first)."""
    return [f"manylinux_2_{minor}_x86_64" for minor in LENT_GLIBC_MINORS] + \
        ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def installs_on_lent_image(filename: str) -> bool:
    """Whether a wheel file installs under the lent image's CPython 3.12 on x86-64 Linux (any of its tags)."""
    from packaging import tags
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        wheel_tags = parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return False
    supported = set(tags.cpython_tags(LENT_PYTHON, abis=["cp312", "abi3", "none"], platforms=lent_platforms()))
    supported |= set(tags.compatible_tags(LENT_PYTHON, "cp312", lent_platforms()))
    return bool(set(wheel_tags) & supported)


def project_requirements() -> list[str]:
    """What the check runs: the project's dependencies (pyproject.toml) and pytest."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], "pytest"]


def carry_closure(image: dict[str, str | None], requirements: list[str]) -> dict[str, tuple[str, str]]:
    """Distributions to carry: name -> (version installed here, why). Walks the requirements (and theirs) as
    installed here; a distribution the image has is carried only when a carried one's requirement refuses the
    image's listed version. Raises CarryError for a needed distribution not installed here."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    carry: dict[str, tuple[str, str]] = {}
    pending = deque((Requirement(r), "the project") for r in requirements)  # breadth first: the project's own first
    while pending:
        requirement, parent = pending.popleft()
        name = canonicalize_name(requirement.name)
        if name in carry or (requirement.marker and not requirement.marker.evaluate(TARGET_MARKERS)):
            continue
        if name in image:
            listed = image[name]
            if parent == "the project" or listed is None or requirement.specifier.contains(listed, prereleases=True):
                continue  # the project's own pins are this machine's; the image's versions are what it runs
            why = f"{parent} needs {requirement}, the image has {listed}"
        else:
            why = f"needed by {parent}, not on the image"
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise CarryError(f"{name} ({why}) is not installed here, so there is no version to carry; "
                             f"pip install it, or list it in {IMAGE_LIST.name} if the image has it") from None
        carry[name] = (distribution.version, why)
        pending += [(Requirement(r), name) for r in distribution.requires or []]
    return carry


def download_wheel(name: str, version: str, wheelhouse: Path) -> Path:
    """One wheel of ``name==version`` for the lent image into ``wheelhouse``; CarryError names the package."""
    platforms = [arg for p in lent_platforms() for arg in ("--platform", p)]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
                           "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
                           "--abi", "none", *platforms, "--dest", str(wheelhouse), "--disable-pip-version-check",
                           f"{name}=={version}"], capture_output=True, text=True, timeout=300)
    saved = [p for p in wheelhouse.glob("*.whl") if _wheel_name(p.name) == name]
    if done.returncode or len(saved) != 1:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no wheel saved"]
        raise CarryError(f"{name}=={version}: pip download for CPython 3.12 x86-64 failed: {lines[-1].strip()}")
    if not installs_on_lent_image(saved[0].name):
        raise CarryError(f"{name}=={version}: {saved[0].name} does not install under CPython 3.12")
    return saved[0]


def _wheel_name(filename: str) -> str:
    from packaging.utils import parse_wheel_filename

    return str(parse_wheel_filename(filename)[0])


def carry_size(wheelhouse: Path) -> tuple[int, int]:
    """Bytes of the working tree the device tool sends (tracked + untracked, not ignored) and of the wheels."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True, timeout=60).stdout.split("\0")
    tree = sum((REPO / f).stat().st_size for f in listed if f and (REPO / f).is_file())
    return tree, sum(p.stat().st_size for p in wheelhouse.glob("*.whl"))


def prepare_carry(wheelhouse: Path) -> int:
    """Empty the wheelhouse, download the carry, print what and how much; 1 when it fails or is too large."""
    if wheelhouse.exists() and any(p.suffix != ".whl" for p in wheelhouse.iterdir()):
        print(f"error: {wheelhouse} holds files other than wheels; name an empty or wheels-only --wheelhouse")
        return 1
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for old in wheelhouse.glob("*.whl"):
        old.unlink()
    try:
        closure = carry_closure(read_image_list(), project_requirements())
        for name, (version, why) in sorted(closure.items()):
            wheel = download_wheel(name, version, wheelhouse)
            print(f"  {wheel.name} ({wheel.stat().st_size / 2**20:.2f} MiB): {why}")
    except (CarryError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}")
        return 1
    tree, wheels = carry_size(wheelhouse)
    total = tree + wheels
    print(f"carry: working tree {tree / 2**20:.1f} MiB + {wheelhouse.name} {wheels / 2**20:.1f} MiB ({len(closure)} wheels, "
          f"all for CPython 3.12) = {total / 2**20:.1f} MiB of the device tool's {CARRY_LIMIT / 2**20:.0f} MiB")
    if total > CARRY_LIMIT:
        print("error: the carry is over the device tool's limit; carry fewer wheels or shrink the tree")
        return 1
    return 0


# ----------------------------------------------------------------------------- the check (GPU machine)

def environment(import_check: bool) -> dict:
    """Python, torch, CUDA, the GPU, the versions the tests run on, and the dependencies' unmet requirements.

    With ``import_check`` each module is imported too (a wheel can be installed and still fail to import).
    """
    import torch

    record: dict = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                    "cuda_available": torch.cuda.is_available(), "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                      memory_gib=round(props.total_memory / 2**30, 1))
    for module, distribution in (("triton", "triton"), ("diffusers", "diffusers"), ("transformers", "transformers"),
                                 ("huggingface_hub", "huggingface-hub"), ("peft", "peft"), ("onnx", "onnx"),
                                 ("onnxruntime", "onnxruntime"), ("tensorrt", "tensorrt"), ("tensorrt_rtx", "tensorrt-rtx-cu13"),
                                 ("xdist", "pytest-xdist")):
        try:
            record[module] = importlib.metadata.version(distribution)
            if import_check:
                importlib.import_module(module)
        except importlib.metadata.PackageNotFoundError:
            record[module] = "missing (not installed)"
        except Exception as exc:  # ImportError, or OSError from a bindings wheel without its libraries
            record[module] = f"missing ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    record["unmet_requirements"] = unmet_requirements()
    return record


def unmet_requirements() -> list[str]:
    """Requirements of the project's dependencies (as installed here: carried or the image's) not met here.

    The project's own pins (pyproject.toml) are the development machine's; what matters on the lent image is
    that each installed dependency finds what it needs, e.g. a carried diffusers the image's huggingface-hub.
    """
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ["packaging is not importable: requirements not checked"]
    markers = {"extra": ""}
    unmet = []
    for text in project_requirements():
        try:
            distribution = importlib.metadata.distribution(Requirement(text).name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(f"the project needs {Requirement(text).name}, found nothing")
            continue
        for requirement in map(Requirement, distribution.requires or []):
            if requirement.marker and not requirement.marker.evaluate(markers):
                continue
            try:
                found = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                found = None
            if found is None or not requirement.specifier.contains(found, prereleases=True):
                unmet.append(f"{distribution.metadata['Name']} needs {requirement}, found {found or 'nothing'}")
    return sorted(set(unmet))


def plan_steps(out: Path, junit: Path, xdist: bool) -> dict[str, list[str]]:
    """Each step's command line (run from the repository root)."""
    workers = ["-n", "4", "--dist", "load"] if xdist else []  # the kernel cases spread over 4 processes
    return {
        # "-o addopts=": not pyproject's "-n 2 -m 'not slow and not extended'"
        "tests": [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-m", "gpu or trt", "-rA",
                  "--continue-on-collection-errors", *workers, f"--junitxml={junit}", *TEST_PATHS],
        "group_norm_gpu": [sys.executable, "benchmarks/group_norm_gpu.py", "--out", str(out), "--pixels", "512", "1024",
                           "--repeats", "20"],  # 1536 px: run the script alone
        "unet_step": [sys.executable, "benchmarks/gpu_check.py", "--step", "unet", "--out", str(out), "--repeats", "20"],
    }


def run_step(name: str, command: list[str], timeout: float, out: Path) -> dict:
    """Run one step in its own process group, output to ``out/<name>.log``; kill the group at the timeout."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled kernels, never the interpreter
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            status, timed_out = process.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            status, timed_out = process.wait(), True
    return {"command": command[1:], "timeout_s": round(timeout), "seconds": round(time.monotonic() - started, 1),
            "exit_status": status, "timed_out": timed_out, "log": f"{name}.log"}


def parse_junit(path: Path) -> list[dict]:
    """Each test case's outcome, the reason for a skip or the message of a failure."""
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, detail = "passed", None
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                outcome, detail = name, (element.get("message") or "")[:500]
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "detail": detail,
                      "seconds": round(float(case.get("time", 0)), 3)})
    return cases


def step_problems(name: str, result: dict, out: Path) -> list[str]:
    """What makes a finished step fail the check (its numbers, its tests, a crash or a timeout)."""
    problems = [f"{name}: timed out after {result['timeout_s']} s"] if result["timed_out"] else []
    if name == "tests":
        cases = result.get("tests", [])
        problems += [f"{c['test']}: {c['outcome']}: {c['detail']}" for c in cases if c["outcome"] in ("failed", "error")]
        if not any(c["outcome"] == "passed" for c in cases):
            problems.append("tests: no test passed")
    elif name in ("group_norm_gpu", "unet_step"):
        path = out / f"{name}.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        result["results"] = path.name if path.is_file() else None
        problems += [f"{name}: {failure}" for failure in record.get("numeric_failures", [])]
        if not record.get("rows"):
            problems.append(f"{name}: no results")
    if result["exit_status"] and not result["timed_out"] and not problems:
        problems.append(f"{name}: exited with status {result['exit_status']} (see {result['log']})")
    return problems


def run_check(out: Path, budget_s: float, dry_run: bool) -> int:
    """Run (or with ``dry_run`` only plan) every step; ``gpu_check.json`` after each; 1 on any problem."""
    deadline = time.monotonic() + budget_s
    import torch

    env = environment(import_check=torch.cuda.is_available() and not dry_run)  # imports take seconds: only for real
    print(json.dumps(env), flush=True)
    record: dict = {"check": "gpu_check", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": dry_run,
                    "budget_s": budget_s, "environment": env, "steps": {}, "problems": [], "status": "running"}
    junit = Path(tempfile.gettempdir()) / f"gpu-check-{os.getpid()}-junit.xml"  # parsed into gpu_check.json
    steps = plan_steps(out, junit, not env["xdist"].startswith("missing"))
    if not env["cuda_available"] and not dry_run:
        record["problems"].append("no CUDA GPU (torch.cuda.is_available() is False); --dry-run writes the plan without one")
    for name, command in steps.items():
        record["steps"][name] = {"command": command[1:], "timeout_s": STEP_TIMEOUTS[name], "status": "planned"}
    if dry_run or record["problems"]:
        record["status"] = "dry run: nothing executed" if dry_run else "not run"
        write_json(out / "gpu_check.json", record)
        print(f"{record['status']}; wrote {out / 'gpu_check.json'}")
        for problem in record["problems"]:
            print(f"error: {problem}")
        return 1 if record["problems"] else 0
    write_json(out / "gpu_check.json", record)
    for name, command in steps.items():
        left = deadline - time.monotonic() - 5
        if left < 30:
            record["steps"][name]["status"] = "not run: budget spent"
            record["problems"].append(f"{name}: not run, the {budget_s:.0f} s budget was spent")
            continue
        print(f"step {name} (timeout {min(STEP_TIMEOUTS[name], left):.0f} s) ...", flush=True)
        result = run_step(name, command, min(STEP_TIMEOUTS[name], left), out)
        if name == "tests" and junit.is_file():
            result["tests"] = parse_junit(junit)
            junit.unlink()
            outcomes = [c["outcome"] for c in result["tests"]]
            result["counts"] = {o: outcomes.count(o) for o in ("passed", "failed", "error", "skipped")}
        problems = step_problems(name, result, out)
        result["status"] = "failed" if problems else "ok"
        record["steps"][name], record["problems"] = result, record["problems"] + problems
        write_json(out / "gpu_check.json", record)
        counts = f" {result['counts']}" if "counts" in result else ""
        print(f"step {name}: {result['status']} in {result['seconds']} s{counts}", flush=True)
    record["status"] = "failed" if record["problems"] else "passed"
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(out / "gpu_check.json", record)
    skipped = [f"{c['test']}: {c['detail']}" for c in record["steps"]["tests"].get("tests", []) if c["outcome"] == "skipped"]
    print("skipped:\n  " + "\n  ".join(skipped or ["nothing"]))
    print("problems:\n  " + "\n  ".join(record["problems"] or ["none"]))
    print(f"gpu check {record['status']}; wrote {out / 'gpu_check.json'}")
    return 1 if record["problems"] else 0


# ----------------------------------------------------------------------------- the UNet step (child process)

def relative_error(actual, expected) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64."""
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def unet_step(out: Path, sizes: list[int], repeats: int) -> int:
    """Full-size SD1.5 UNet (random weights), fp16, batch 2: torch vs fused GroupNorm, each eager and as a CUDA graph.

    Checks graph replay against eager (same module) and fused against torch GroupNorm (relative L2 error);
    records CUDA-event medians. Writes ``unet_step.json`` after every row.
    """
    import torch
    from diffusers import UNet2DConditionModel

    from resadapter_rt.bench.cuda_timing import cuda_event_times_ms
    from resadapter_rt.kernels.fuse import fuse_group_norm_silu
    from resadapter_rt.models.families import SD15
    from resadapter_rt.models.tiny import full_size_unet_config

    torch.manual_seed(0)
    with torch.device("cuda"):  # initialise on the GPU: seconds instead of a minute on the CPU
        eager = UNet2DConditionModel(**full_size_unet_config(SD15)).to(torch.float16).eval()
    fused = copy.deepcopy(eager)
    pairs = fuse_group_norm_silu(fused)
    record = {"benchmark": "unet_step", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": "fp16",
              "batch": 2, "fused_pairs": pairs, "repeats": repeats, "tolerances": {
                  "graph_vs_eager_rel_l2": UNET_GRAPH_REL_TOLERANCE, "fused_vs_torch_rel_l2": UNET_FUSED_REL_TOLERANCE},
              "rows": [], "numeric_failures": []}
    for size in sizes:
        g = torch.Generator(device="cuda").manual_seed(size)
        inputs = {"sample": torch.randn(2, 4, size // 8, size // 8, device="cuda", generator=g).half(),
                  "timestep": torch.tensor([500.0, 500.0], device="cuda"),
                  "encoder_hidden_states": torch.randn(2, 77, 768, device="cuda", generator=g).half()}
        reference = None
        for variant, unet in (("torch", eager), ("torch+fused_group_norm", fused)):
            row = {"variant": variant, "size": f"{size}x{size}"}
            try:
                row.update(_graph_and_eager(unet, inputs, repeats, cuda_event_times_ms))
            except Exception as exc:  # a capture error is a result too: recorded, and a failure
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                record["numeric_failures"].append(f"{variant} {size}px: {row['error']}")
            output = row.pop("_output", None)
            if variant == "torch":
                reference = output
            elif output is not None and reference is not None:
                row["rel_l2_vs_torch"] = relative_error(output, reference)
                if not row["rel_l2_vs_torch"] <= UNET_FUSED_REL_TOLERANCE:
                    record["numeric_failures"].append(f"fused vs torch {size}px: relative L2 {row['rel_l2_vs_torch']:.3g}")
            if "graph_rel_l2_vs_eager" in row and not row["graph_rel_l2_vs_eager"] <= UNET_GRAPH_REL_TOLERANCE:
                record["numeric_failures"].append(
                    f"{variant} {size}px: graph vs eager relative L2 {row['graph_rel_l2_vs_eager']:.3g}")
            record["rows"].append(row)
            write_json(out / "unet_step.json", record)
            print(json.dumps(row), flush=True)
    return 1 if record["numeric_failures"] else 0


def _graph_and_eager(unet, inputs: dict, repeats: int, times_ms) -> dict:
    """Eager output and timing; a CUDA graph captured on the same inputs, replayed on fresh ones and compared."""
    import torch

    inputs = {name: tensor.clone() for name, tensor in inputs.items()}  # the caller's stay as they were
    with torch.inference_mode():
        step = lambda: unet(**inputs).sample  # noqa: E731
        output = step()
        if not bool(torch.isfinite(output).all()):
            raise ValueError("eager output is not finite")
        eager_ms = statistics.median(times_ms(step, repeats))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = step()
        fresh = torch.randn_like(inputs["sample"])
        inputs["sample"].copy_(fresh)  # replay on new data: the graph reads the static input buffer
        graph.replay()
        torch.cuda.synchronize()
        replayed = static_output.clone()
        expected = step()
        graph_ms = statistics.median(times_ms(graph.replay, repeats))
    return {"eager_ms": round(eager_ms, 3), "cuda_graph_ms": round(graph_ms, 3),
            "graph_rel_l2_vs_eager": relative_error(replayed, expected),
            "graph_bitwise_equal": bool(torch.equal(replayed, expected)), "_output": output}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-carry", action="store_true", help="here: download the wheelhouse, check tags and size")
    parser.add_argument("--wheelhouse", type=Path, default=REPO / "benchmarks/wheelhouse", help="with --prepare-carry")
    add_output_arguments(parser)  # --out DIR (on the device: $OUT) | --update-results: benchmarks/results/gpu_check_<gpu>/
    parser.add_argument("--dry-run", action="store_true", help="write the plan as gpu_check.json, run nothing")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="all steps together (s)")
    parser.add_argument("--step", choices=["unet"], help=argparse.SUPPRESS)  # the unet_step child process
    parser.add_argument("--size", type=int, action="append", help="unet step sizes in px (default 512 and 1024)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.prepare_carry:
        return prepare_carry(args.wheelhouse)
    if args.budget_s <= 0 or args.repeats <= 0:
        parser.error("--budget-s and --repeats must be positive")
    try:
        out = committed_dir() if args.update_results else output_dir(args, "gpu_check")
    except ResAdapterRTError as exc:
        parser.error(str(exc))
    if args.step == "unet":
        return unet_step(out, args.size or [512, 1024], args.repeats)
    return run_check(out, args.budget_s, args.dry_run)


def committed_dir() -> Path:
    """``benchmarks/results/gpu_check_<gpu>/`` (``cpu`` without CUDA), made if missing."""
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = COMMITTED / ("gpu_check_" + "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-"))
    out.mkdir(parents=True, exist_ok=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
