"""Batching requests of equal size, steps, scheduler, guidance and alpha into one UNet batch.

``generate_batch`` runs the pipeline's own stages (``prepare`` per request, ``encode`` per request,
one ``denoise`` over the batch with one random generator per request, ``decode`` per image), so
each image is what ``resadapter-rt generate`` gives for its parameters. ``Batcher`` groups the
jobs waiting in a replica: the oldest job's key picks the group, up to ``max_batch_size`` jobs;
other keys wait for the next batch, so different sizes never share a UNet batch. A job whose
caller went away (deadline, disconnect) is dropped before it starts, and a batch whose jobs are
all gone stops at the next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..runtime.pipeline import Conditioning, GenerationRequest, ResAdapterPipeline, Timings


def prepare_request(pipe: ResAdapterPipeline, parameters: dict[str, Any]) -> GenerationRequest:
    """A checked request from protocol inputs, with ``resadapter-rt generate``'s defaults for what was left out
    (width and height default to the model's training size)."""
    from ..runtime.prompt_weighting import DEFAULT_SYNTAX
    from ..runtime.schedulers import DEFAULT_SCHEDULER
    from .options import GENERATION_DEFAULTS

    get, size = parameters.get, int(pipe.manifest["training_size"])
    return pipe.prepare(
        get("prompt"), get("height", size), get("width", size), get("steps", GENERATION_DEFAULTS["steps"]),
        get("guidance_scale", GENERATION_DEFAULTS["guidance_scale"]), get("negative_prompt"),
        get("seed", GENERATION_DEFAULTS["seed"]), None, 1,
        str(get("resadapter_alpha", "auto")),  # as the CLI's --alpha text, so errors read the same
        get("scheduler", DEFAULT_SCHEDULER), get("prompt_weighting", DEFAULT_SYNTAX),
        tiling={"tile_size": get("tile_size"), "tile_stride": get("tile_stride"), "circular": get("circular", False)})



class BatchDropped(Exception):
    """Every caller of a running batch is gone; the batch stopped early."""


def batch_key(request: GenerationRequest) -> tuple:
    """Requests with equal keys can share one UNet batch (and one scheduler). A tiled request is its own batch:
    its windows already fill the UNet calls up to the profile's batch range."""
    return (request.width, request.height, request.steps, request.scheduler, request.guidance_scale, request.alpha,
            id(request) if request.tiling else None)


@dataclass
class BatchResult:
    images: list[np.ndarray]  # uint8 [H, W, 3], one per request
    unet_seconds: float
    steps: int


def generate_batch(pipe: ResAdapterPipeline, requests: list[GenerationRequest],
                   keep_going: Callable[[], bool] = lambda: True) -> BatchResult:
    """Images for prepared requests of one ``batch_key``: one UNet call per step for all requests whose prompts
    encode to the same number of tokens (long, ``BREAK`` or ``.and()`` prompts give more 77-token chunks; such
    requests run as their own UNet batch, so every image stays what a single run gives)."""
    keys = {batch_key(r) for r in requests}
    if len(keys) != 1:
        raise ValueError(f"requests of different batch keys cannot share a batch: {sorted(map(str, keys))}")
    conditionings = [pipe.encode(r) for r in requests]
    by_length: dict[int, list[int]] = {}
    for index, conditioning in enumerate(conditionings):
        by_length.setdefault(conditioning.embeds.shape[1], []).append(index)

    def stop_when_abandoned(done: int, total: int) -> None:
        if not keep_going():
            raise BatchDropped

    timings = Timings()
    images: list[np.ndarray | None] = [None] * len(requests)
    for indices in by_length.values():
        group = [requests[i] for i in indices]
        latents = pipe.denoise(_merged_request(group), _merged_conditioning(group[0].cfg, [conditionings[i] for i in indices]),
                               timings, stop_when_abandoned)
        for row, index in enumerate(indices):
            images[index] = np.asarray(pipe.decode(latents[row:row + 1], None, requests[index].circular)[0])
    return BatchResult(images=images, unet_seconds=sum(timings.unet_steps), steps=len(timings.unet_steps) // len(by_length))


def _merged_request(requests: list[GenerationRequest]) -> GenerationRequest:
    """One request standing for a batch: every prompt, one random generator per request."""
    return dataclasses.replace(requests[0], prompts=[p for r in requests for p in r.prompts], negatives=None,
                               generator=[r.generator for r in requests])


def _merged_conditioning(cfg: bool, conditionings: list[Conditioning]) -> Conditioning:
    """The batch's text conditioning; with CFG in diffusers' order over the batch: [negatives..., positives...]."""
    if cfg:
        halves = [(c.embeds.chunk(2), None if c.pooled is None else c.pooled.chunk(2)) for c in conditionings]
        embeds = torch.cat([h[0][0] for h in halves] + [h[0][1] for h in halves])
        pooled = None if halves[0][1] is None else torch.cat([h[1][0] for h in halves] + [h[1][1] for h in halves])
    else:
        embeds = torch.cat([c.embeds for c in conditionings])
        pooled = None if conditionings[0].pooled is None else torch.cat([c.pooled for c in conditionings])
    return Conditioning(embeds=embeds, pooled=pooled)


@dataclass(eq=False)  # jobs are distinct by identity
class Job:
    request: GenerationRequest
    future: asyncio.Future
    key: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.key = batch_key(self.request)


class Batcher:
    """Collects a replica's jobs and runs them in batches on a worker thread, one batch at a time."""

    def __init__(self, pipe: ResAdapterPipeline, max_batch_size: int, wait_s: float = 0.02) -> None:
        self.pipe, self.max_batch_size, self.wait_s = pipe, max_batch_size, wait_s
        self.pending: list[Job] = []
        self.wake = asyncio.Event()
        self.worker: asyncio.Task | None = None
        self.dropped = 0  # jobs abandoned before or while they ran
        self.active = 0  # jobs submitted and not yet answered or dropped

    async def submit(self, request: GenerationRequest) -> tuple[np.ndarray, dict[str, Any]]:
        """The image for ``request`` and stats of the batch it ran in; cancelling the caller drops the job."""
        loop = asyncio.get_running_loop()
        job = Job(request, loop.create_future())
        self.pending.append(job)
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._work())
        self.wake.set()
        self.active += 1
        try:
            return await job.future  # a cancelled caller cancels the future: the worker then skips the job
        finally:
            self.active -= 1

    def _take_group(self) -> list[Job]:
        live = [j for j in self.pending if not j.future.done()]
        self.dropped += len(self.pending) - len(live)
        if not live:
            self.pending = []
            return []
        key = live[0].key
        group = [j for j in live if j.key == key][: self.max_batch_size]
        self.pending = [j for j in live if j not in group]
        return group

    async def _work(self) -> None:
        while True:
            if not any(not j.future.done() for j in self.pending):
                self.dropped += len(self.pending)
                self.pending = []
                self.wake.clear()
                await self.wake.wait()
                continue
            if len(self.pending) < self.max_batch_size:
                await asyncio.sleep(self.wait_s)  # let equal requests arriving together join
            group = self._take_group()
            if not group:
                continue
            try:
                result = await asyncio.to_thread(
                    generate_batch, self.pipe, [j.request for j in group], lambda: any(not j.future.done() for j in group))
            except BatchDropped:
                self.dropped += len(group)
                continue
            except Exception as exc:  # a failed batch fails its callers, not the replica
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            stats = {"batch_size": len(group), "steps": result.steps, "unet_seconds": result.unet_seconds}
            for job, image in zip(group, result.images):
                if job.future.done():
                    self.dropped += 1
                else:
                    job.future.set_result((image, stats))
