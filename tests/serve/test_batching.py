"""Batching without Ray: equal requests share one UNet batch, other sizes wait, images equal single runs."""

from __future__ import annotations

import asyncio

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
