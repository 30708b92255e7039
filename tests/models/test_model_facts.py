"""A pipeline directory's resadapter_rt.json: its training size and served range reach the export and the runtime."""

from __future__ import annotations

import json

import pytest

from resadapter_rt import ResAdapterRTError
from resadapter_rt.models.mini import model_facts


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "not a JSON object"),
    ("{bad", "not a JSON object"),
    ('{"training_size": 100}', "training_size 100 is not a multiple of 8 of at least 64 pixels"),
    ('{"pixel_range": [512, 128]}', "pixel_range [512, 128] is not [low, high] in multiples of 8 px, low <= high"),
    ('{"pixel_range": [64]}', "pixel_range [64] is not [low, high]"),
])
def test_bad_model_facts_are_one_line(tmp_path, text, message):
    (tmp_path / "resadapter_rt.json").write_text(text)
    with pytest.raises(ResAdapterRTError, match=r"resadapter_rt\.json: ") as caught:
        model_facts(tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_absent_facts_mean_the_familys(tmp_path):
    assert model_facts(tmp_path) == {}
    (tmp_path / "resadapter_rt.json").write_text(json.dumps({"training_size": 256}))
    assert model_facts(tmp_path) == {"training_size": 256}
