"""The package layout: stages import only earlier stages, and the top level stays small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "resadapter_rt"
# Each stage may import the stages listed before it (and the shared top-level modules).
STAGES = ["models", "training", "export", "engines", "kernels", "runtime", "serve", "miniature", "bench"]
SHARED = {"errors", "files", "cache", ""}  # "" is ``from .. import __version__``
ALLOWED_EXTRA = {"kernels": set(), "runtime": {"kernels"}}


def _imported_subpackages(path: Path) -> set[str]:
    """Top-level names under resadapter_rt that a module imports (relative or absolute)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for a top-level module
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level == depth + 1:
                    names.add((node.module or "").split(".")[0])
                elif node.level <= depth:
                    names.add(path.relative_to(PACKAGE).parts[0])  # inside its own subpackage
            elif (node.module or "").startswith("resadapter_rt"):
                names.add((node.module.split(".") + [""])[1])
    return names


def test_top_level_holds_at_most_six_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__main__.py")  # the entry point is no module
    assert len(modules) <= 6, modules


@pytest.mark.parametrize("stage", STAGES)
def test_stages_import_only_earlier_stages(stage):
    allowed = set(STAGES[: STAGES.index(stage) + 1]) | SHARED | ALLOWED_EXTRA.get(stage, set())
    if stage == "runtime":
        allowed.discard("bench")
    for path in (PACKAGE / stage).rglob("*.py"):
        imported = _imported_subpackages(path)
        assert imported <= allowed, f"{path.relative_to(PACKAGE)} imports {sorted(imported - allowed)}"


def test_shared_modules_import_no_stage():
    for name in SHARED - {""}:
        imported = _imported_subpackages(PACKAGE / f"{name}.py")
        assert imported <= SHARED, f"{name}.py imports {sorted(imported - SHARED)}"


def test_every_subpackage_says_what_it_owns():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init.relative_to(PACKAGE)} has no docstring saying what it owns"


def test_public_import_paths_still_work():
    from resadapter_rt import load_adapter, load_components, merge_adapter  # noqa: F401
    from resadapter_rt.kernels import group_norm  # noqa: F401
    from resadapter_rt.pipeline import ResAdapterPipeline
    from resadapter_rt.runtime import ResAdapterPipeline as Same

    assert ResAdapterPipeline is Same


def test_every_extended_tier_entry_names_an_existing_test():
    """tiers.py stays in step with the tests: each entry's file exists and defines the named test."""
    from tiers import EXTENDED

    for pattern in EXTENDED:
        file, _, name = pattern.partition("::")
        path = PACKAGE.parent / file
        assert path.is_file(), pattern
        function = name.split("[")[0].split("*")[0]
        if function:
            assert f"def {function}" in path.read_text(), pattern


def test_cli_parser_and_package_load_without_torch():
    """``--help`` and usage errors answer fast: building the parser imports neither torch nor diffusers."""
    import subprocess
    import sys

    probe = ("import sys; import resadapter_rt; from resadapter_rt.cli import build_parser; build_parser(); "
             "heavy = sorted({'torch', 'diffusers', 'transformers', 'onnxruntime'} & set(sys.modules)); print(heavy)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
