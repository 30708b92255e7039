"""Benchmarks: where they write (a new directory unless --update-results), strict JSON, and what a CPU
without native bf16 records ("not measurable here", never an fp32-vs-fp32 number)."""

from __future__ import annotations

import argparse
import json
import math
import re
import runpy
import sys
from pathlib import Path

import pytest

from resadapter_rt import ResAdapterRTError
from resadapter_rt.bench import results
from resadapter_rt.bench.cpu_backends import markdown, measurable_backends

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
NO_BF16 = ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]  # what OpenVINO reports on this project's AMD EPYC machines
REFUSAL = ("--cpu-precision bf16 needs a CPU with native bf16 (AVX512_BF16 or AMX); OpenVINO reports only "
           "FP32, INT8, BIN, EXPORT_IMPORT here; use --cpu-precision fp32 (or auto)")
NOT_OURS = {"gpu_check.py", "group_norm_gpu.py"}  # issue #31's; they write their own GPU results


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    results.add_output_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The scratch and committed locations moved into tmp_path, so nothing of the checkout is touched."""
    monkeypatch.setattr(results, "COMMITTED", tmp_path / "benchmarks" / "results")
    monkeypatch.setattr(results, "SCRATCH", tmp_path / "benchmarks" / "results" / "tmp")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    return tmp_path


def test_default_is_a_new_directory_and_only_update_results_is_the_committed_one(scratch):
    first, second = results.output_dir(parse([]), "x"), results.output_dir(parse([]), "x")
    assert first != second and first.parent == second.parent == results.SCRATCH and first.name.startswith("x-")
    assert results.output_dir(parse(["--out", str(scratch / "mine")]), "x") == scratch / "mine" and (scratch / "mine").is_dir()
    assert results.output_dir(parse(["--update-results"]), "x") == results.COMMITTED
    (scratch / "afile").write_text("")
    with pytest.raises(ResAdapterRTError, match=r"^--out .*afile: exists and is not a directory; pass a directory"):
        results.output_dir(parse(["--out", str(scratch / "afile")]), "x")
    with pytest.raises(SystemExit):  # both at once is a usage error
        parse(["--out", "d", "--update-results"])


def test_json_is_strict_and_non_finite_numbers_are_refused_by_key(tmp_path):
    path = results.write_json(tmp_path / "r.json", {"rows": [{"ms": 1.5}], "bf16": results.not_measurable("no bf16")})
    assert json.loads(path.read_text()) == {"rows": [{"ms": 1.5}], "bf16": "not measurable here: no bf16"}
    for value in (math.inf, math.nan):
        with pytest.raises(ResAdapterRTError, match=r"^record\['rows'\]\[0\]\['psnr_db'\] is (inf|nan), which is not a measured"):
            results.write_json(tmp_path / "bad.json", {"rows": [{"psnr_db": value}]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # nothing half-written left


def test_every_benchmark_takes_out_and_update_results():
    scripts = sorted(p for p in BENCHMARKS.glob("*.py") if p.name not in NOT_OURS)
    missing = [p.name for p in scripts if "add_output_arguments(parser)" not in p.read_text()]
    assert len(scripts) >= 17 and missing == []
    committed = re.compile(r'"benchmarks/results|"benchmarks" / "results"|"results" / (?!"tmp")')  # a path into the committed results
    assert [p.name for p in scripts if committed.search(p.read_text())] == []


def test_bf16_quality_without_native_bf16_says_so_and_records_it(scratch, monkeypatch, capsys):
    """The check generate applies: no export, no fp32-vs-fp32 comparison (today's bug: PSNR Infinity, exit 0)."""
    pytest.importorskip("openvino")
    monkeypatch.setattr("resadapter_rt.runtime.openvino_runners.cpu_capabilities", lambda core: NO_BF16)
    monkeypatch.setattr(sys, "argv", ["cpu_bf16_quality.py", "--tiny", "--out", str(scratch / "out")])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(BENCHMARKS / "cpu_bf16_quality.py"), run_name="__main__")
    assert exited.value.code == 0
    out = scratch / "out" / "cpu_bf16_quality_tiny-sd15.json"
    assert capsys.readouterr().out.splitlines() == [f"cpu_bf16_quality: not measurable here: {REFUSAL} (recorded in {out})"]
    record = json.loads(out.read_text())
    assert record["result"] == f"not measurable here: {REFUSAL}" and record["cpu_capabilities"] == NO_BF16
    assert sorted(p.name for p in (scratch / "out").iterdir()) == [out.name]


def test_bf16_quality_refuses_identical_images():
    quality = runpy.run_path(str(BENCHMARKS / "cpu_bf16_quality.py"))
    torch = pytest.importorskip("torch")
    image = torch.rand(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match="bf16 was not applied, nothing was measured"):
        quality["psnr"](image, image.clone())
    assert quality["psnr"](image, (image + 0.01).clamp(0, 1)) == pytest.approx(40.0, abs=0.5)


def test_cpu_backends_leaves_out_bf16_with_the_reason():
    kept, skipped = measurable_backends(("torch", "onnxruntime", "openvino-fp32", "openvino-bf16"), REFUSAL)
    assert kept == ("torch", "onnxruntime", "openvino-fp32")
    assert skipped == {"openvino-bf16": f"not measurable here: {REFUSAL}"}
    assert measurable_backends(("onnxruntime", "openvino-bf16"), None) == (("onnxruntime", "openvino-bf16"), {})
    row = {"width": 256, "height": 256, "batch": 2, "gflop": 1.2, "onnxruntime": {"median_ms": 42.0, "speed_vs_onnxruntime": 1.0,
                                                                                   "percent_of_peak": 30.0}}
    table = markdown({"unet_step": [row], "end_to_end": [], "not_measured": skipped})
    assert table.splitlines()[-1] == f"openvino-bf16: not measurable here: {REFUSAL}"


def test_cpu_backends_with_only_bf16_exits_cleanly_before_exporting(scratch, monkeypatch, capsys):
    pytest.importorskip("openvino")
    monkeypatch.setattr("resadapter_rt.runtime.openvino_runners.cpu_capabilities", lambda core: NO_BF16)
    monkeypatch.setattr(sys, "argv", ["cpu_backends.py", "--tiny", "--backends", "openvino-bf16", "--out", str(scratch / "o")])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(BENCHMARKS / "cpu_backends.py"), run_name="__main__")
    out = scratch / "o" / "cpu_backends_tiny-sd15.json"
    assert exited.value.code == 0
    assert capsys.readouterr().out.splitlines() == [f"[cpu-backends] openvino-bf16: not measurable here: {REFUSAL} (recorded in {out})"]
    assert json.loads(out.read_text())["not_measured"] == {"openvino-bf16": f"not measurable here: {REFUSAL}"}
