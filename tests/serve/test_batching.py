"""Batching without Ray: equal requests share one UNet batch, other sizes wait, images equal single runs."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from serve_fixtures import tiny_export  # noqa: F401 (fixture)
from resadapter_rt.runtime.pipeline import ResAdapterPipeline


@pytest.fixture(scope="module")
def pipe(tiny_export):
    return ResAdapterPipeline.from_artifacts(tiny_export)


def prepared(pipe, seed, width=128, height=128, scheduler="euler-a", negative=None):
    return pipe.prepare("a fox", height, width, 3, 6.0, negative, seed, None, 1, 0.9, scheduler)


def test_batcher_groups_equal_sizes_and_each_image_equals_its_single_run(pipe, monkeypatch):
    from resadapter_rt.serve import batching

    groups = []
    original = batching.generate_batch

    def recording(pipe, requests, keep_going):
        groups.append([(r.width, r.seed) for r in requests])
        return original(pipe, requests, keep_going)

    monkeypatch.setattr(batching, "generate_batch", recording)
    jobs = [prepared(pipe, 1), prepared(pipe, 2, width=192), prepared(pipe, 3, negative="blurry"), prepared(pipe, 4)]

    async def submit_all():
        batcher = batching.Batcher(pipe, max_batch_size=2)
        return await asyncio.gather(*(batcher.submit(job) for job in jobs))

    results = asyncio.run(submit_all())
    assert groups == [[(128, 1), (128, 3)], [(192, 2)], [(128, 4)]]
    assert [stats["batch_size"] for _, stats in results] == [2, 1, 2, 1]
    for (image, _), job in zip(results, jobs):
        single = pipe("a fox", height=job.height, width=job.width, num_inference_steps=3, guidance_scale=6.0,
                      negative_prompt=job.negatives[0] if job.negatives else None, seed=job.seed,
                      resadapter_alpha=0.9, scheduler="euler-a").images[0]
        assert np.abs(image.astype(int) - np.asarray(single)).max() <= 1


def test_prompts_of_different_token_counts_in_one_batch_each_equal_their_single_run(pipe):
    """A 77-token and a two-chunk (154-token) prompt cannot share one UNet batch; each image is still its own."""
    from resadapter_rt.serve.batching import generate_batch

    long_prompt = "a fox " + " ".join(["in a quiet snowy forest at dawn"] * 12)
    jobs = [pipe.prepare(prompt, 128, 128, 3, 6.0, None, seed, None, 1, 0.9, "euler-a")
            for prompt, seed in [("a fox", 1), (long_prompt, 2), ("a red fox", 3)]]
    result = generate_batch(pipe, jobs)
    assert result.steps == 3
    for image, job in zip(result.images, jobs):
        single = pipe(job.prompts[0], height=128, width=128, num_inference_steps=3, guidance_scale=6.0, seed=job.seed,
                      resadapter_alpha=0.9, scheduler="euler-a").images[0]
        assert np.abs(image.astype(int) - np.asarray(single)).max() <= 1


def test_different_keys_never_share_a_batch(pipe):
    from resadapter_rt.serve.batching import generate_batch

    with pytest.raises(ValueError, match="different batch keys"):
        generate_batch(pipe, [prepared(pipe, 1), prepared(pipe, 2, height=136)])


def test_a_cancelled_job_is_dropped_before_it_runs(pipe):
    from resadapter_rt.serve.batching import Batcher

    async def scenario():
        batcher = Batcher(pipe, max_batch_size=1)
        first = asyncio.ensure_future(batcher.submit(prepared(pipe, 1)))
        second = asyncio.ensure_future(batcher.submit(prepared(pipe, 2, width=192)))
        await asyncio.sleep(0)
        second.cancel()
        await first
        return batcher.dropped, second.cancelled()

    assert asyncio.run(scenario()) == (1, True)


def test_a_tiled_circular_request_from_protocol_inputs_equals_the_pipelines_own_run(pipe):
    """tile_size / tile_stride / circular from the server's inputs: the image is what ``pipe(..., tile_size=...)`` gives,
    and a tiled request never shares a UNet batch with an equal one (its windows fill the calls)."""
    from resadapter_rt.serve.batching import batch_key, generate_batch, prepare_request
    from resadapter_rt.serve.options import GENERATION_DEFAULTS
    from resadapter_rt.serve.protocol import parse_infer_request

    body = json.dumps({"inputs": [
        {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a fox"]},
        {"name": "width", "shape": [1], "datatype": "INT64", "data": [384]},
        {"name": "height", "shape": [1], "datatype": "INT64", "data": [128]},
        {"name": "steps", "shape": [1], "datatype": "INT64", "data": [2]},
        {"name": "tile_size", "shape": [1], "datatype": "INT64", "data": [128]},
        {"name": "tile_stride", "shape": [1], "datatype": "INT64", "data": [64]},
        {"name": "circular", "shape": [1], "datatype": "BOOL", "data": [True]}]}).encode()
    parameters = parse_infer_request(body, None).parameters
    assert parameters["circular"] is True
    first, second = prepare_request(pipe, parameters), prepare_request(pipe, parameters)
    assert first.tiling.circular and len(first.tiling.windows) == 6
    assert batch_key(first) != batch_key(second)
    image = generate_batch(pipe, [first]).images[0]
    expected = pipe("a fox", height=128, width=384, num_inference_steps=2, seed=GENERATION_DEFAULTS["seed"],
                    guidance_scale=GENERATION_DEFAULTS["guidance_scale"], tile_size=128, tile_stride=64, circular=True).images[0]
    assert np.abs(image.astype(int) - np.asarray(expected)).max() <= 1


@pytest.mark.parametrize("value, message", [
    (1, "input circular must be true or false, got 1"),
    ("yes", "input circular must be true or false, got 'yes'"),
])
def test_circular_must_be_a_boolean(value, message):
    from resadapter_rt.errors import ResAdapterRTError
    from resadapter_rt.serve.protocol import parse_infer_request

    body = json.dumps({"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a fox"]},
                                  {"name": "circular", "shape": [1], "datatype": "BOOL", "data": [value]}]}).encode()
    with pytest.raises(ResAdapterRTError) as error:
        parse_infer_request(body, None)
    assert str(error.value) == message


def test_a_tile_stride_without_a_tile_size_is_the_pipelines_one_line_error(pipe):
    from resadapter_rt.errors import ResAdapterRTError
    from resadapter_rt.serve.batching import prepare_request

    with pytest.raises(ResAdapterRTError, match="^tile_stride needs a tile size; pass --tile-size PX"):
        prepare_request(pipe, {"prompt": "a fox", "tile_stride": 64})
