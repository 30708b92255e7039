"""The ingress's drain (graceful shutdown, step one) with stand-in replicas: no Ray, under a second. The whole
SIGTERM path through `resadapter-rt serve` is test_serve_cli.py's extended test."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("ray.serve", reason="serving tests need the serve extra: pip install -e '.[serve]'")


class StandInResponse:
    """A replica's answer after ``seconds`` (awaitable and cancellable like a DeploymentResponse)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.cancelled = seconds, False

    def __await__(self):
        return self._answer().__await__()

    async def _answer(self) -> dict:
        await asyncio.sleep(self.seconds)
        return {"image": "an image", "stats": {"batch_size": 1, "steps": 1, "unet_seconds": 0.0}}

    def cancel(self) -> None:
        self.cancelled = True


class StandInModel:
    """``model.generate.remote(parameters)`` answering after the next of ``seconds``."""

    def __init__(self, *seconds: float) -> None:
        self.seconds, self.responses = list(seconds), []
        self.generate = self

    def remote(self, parameters: dict) -> StandInResponse:
        self.responses.append(StandInResponse(self.seconds.pop(0)))
        return self.responses[-1]


def ingress(model: StandInModel):
    from resadapter_rt.serve.app import OpenInferenceIngress
    from resadapter_rt.serve.options import ServeOptions

    user_class = OpenInferenceIngress.func_or_class.__bases__[0]  # under Serve's ASGI wrapper
    assert user_class.__module__ == "resadapter_rt.serve.app"
    return user_class(model, ServeOptions(artifacts="unused", max_pixels=512 * 512), 256)


def test_drain_finishes_requests_in_flight_cuts_them_at_the_timeout_and_refuses_new_ones():
    from resadapter_rt.serve.protocol import InferRequest

    async def scenario():
        model = StandInModel(0.3, 30)
        server = ingress(model)
        quick, slow = (asyncio.ensure_future(server._generate(InferRequest(parameters={"prompt": "p"}))) for _ in range(2))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        counts = await server.drain(1.0)
        seconds = time.monotonic() - started
        late = await server._generate(InferRequest(parameters={"prompt": "p"}))
        return model, counts, seconds, await quick, await slow, late, await server._ready()

    model, counts, seconds, quick, slow, late, ready = asyncio.run(scenario())
    assert counts == {"in_flight": 2, "cut": 1} and 1.0 <= seconds < 2.0
    assert (quick.outcome, quick.image) == ("ok", "an image")
    assert (slow.outcome, slow.message) == ("draining", "the server shut down before the image was ready (the drain "
                                                        "timeout passed); retry on another instance")
    assert [r.cancelled for r in model.responses] == [False, True]
    assert (late.outcome, late.message) == ("draining", "the server is shutting down and takes no new requests; "
                                                        "retry on another instance")
    assert not ready and len(model.responses) == 2, "a request after the drain reached a replica"


def test_drain_with_nothing_in_flight_returns_at_once():
    async def scenario():
        started = time.monotonic()
        return await ingress(StandInModel()).drain(30.0), time.monotonic() - started

    counts, seconds = asyncio.run(scenario())
    assert counts == {"in_flight": 0, "cut": 0} and seconds < 0.5
