"""Every GroupNorm kernel variant compiled ahead of time for real GPU targets (no GPU needed).

The compilation runs in a subprocess without ``TRITON_INTERPRET``, once per module. This process
never imports Triton: the interpreter tests set ``TRITON_INTERPRET=1`` before their first import of
it, and Triton fixes its own library functions to the interpreter or the compiler at import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resadapter_rt.kernels.aot import TARGETS, variants

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install -e .[test])", allow_module_level=True)

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks/results/group_norm_aot.json"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))  # leave the user's cache alone
    run = subprocess.run([sys.executable, "-m", "resadapter_rt.kernels.aot"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("capability", TARGETS)
def test_every_variant_compiles_without_spills(compiled, capability):
    target = f"sm_{capability}"
    results = {r["variant"]: r for r in compiled["results"] if r["target"] == target}
    assert sorted(results) == sorted(v.name for v in variants())  # 12 single + 6 stats + 1 finalize + 12 apply
    for name, r in results.items():
        assert 0 < r["registers"] <= 255 and r["cubin_bytes"] > 0, name
        assert r["spill_stores"] == r["spill_loads"] == r["stack_bytes"] == 0, name


def test_blackwell_targets_use_the_newer_ptxas(compiled):
    """sm_90 and sm_120 go through ptxas-blackwell (CUDA >= 12.8 knows sm_120); older targets through ptxas."""
    releases = {target: tuple(map(int, text.split()[1].rstrip(",").split("."))) for target, text in compiled["ptxas"].items()}
    assert releases["sm_120"] >= (12, 8) and releases["sm_90"] == releases["sm_120"]


def test_committed_register_table_is_current(compiled):
    """benchmarks/results/group_norm_aot.json (quoted in the docs) matches what the kernels compile to now."""
    committed = json.loads(COMMITTED.read_text())
    key = lambda r: (r["variant"], r["target"])  # noqa: E731
    fields = ("registers", "spill_stores", "spill_loads", "stack_bytes")
    now = {key(r): [r[f] for f in fields] for r in compiled["results"]}
    then = {key(r): [r[f] for f in fields] for r in committed["results"]}
    assert now == then, "kernels changed: run python benchmarks/group_norm_aot.py --update-results and commit the result"
