"""schemas/manifest.schema.json describes what the exporter really writes (SD1.5 dynamic, SDXL baked) and rejects
manifests that break it."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import REPO, quiet
from serve_fixtures import tiny_export  # noqa: F401 (fixture)

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads((REPO / "schemas" / "manifest.schema.json").read_text())


@pytest.fixture(scope="module")
def sdxl_baked(tmp_path_factory):
    from resadapter_rt.export.exporter import ExportOptions, export_pipeline

    root = tmp_path_factory.mktemp("schema") / "sdxl"
    export_pipeline(ExportOptions(model="tiny-sdxl", resadapter="tiny-sdxl", alpha=0.6, validation_sizes=((256, 256, 1),)),
                    root, progress=quiet)
    return json.loads((root / "manifest.json").read_text())


def test_schema_is_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_exporters_manifests_validate(tiny_export, sdxl_baked):
    sd15 = json.loads((tiny_export / "manifest.json").read_text())
    for manifest in (sd15, sdxl_baked):
        jsonschema.Draft202012Validator(SCHEMA).validate(manifest)
    assert set(sdxl_baked["components"]) == {"unet", "text_encoder", "text_encoder_2", "vae_decoder"}


@pytest.mark.parametrize("break_it", [
    lambda m: m.pop("family"),
    lambda m: m.update(alpha_mode="dynamic"),  # a baked alpha with dynamic mode
    lambda m: m["components"]["unet"]["inputs"][0].update(dtype="float64"),
    lambda m: m["components"]["unet"].update(sha256="xyz"),
    lambda m: m["components"]["vae_decoder"].pop("path"),
    lambda m: m["components"]["unet"]["outputs"][0]["shape"].append(-1),
], ids=["no-family", "alpha-mode", "tensor-dtype", "sha256", "no-path", "negative-dim"])
def test_broken_manifests_are_rejected(sdxl_baked, break_it):
    manifest = copy.deepcopy(sdxl_baked)
    break_it(manifest)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(manifest)
