"""The Ray Serve application: an Open Inference Protocol ingress in front of ``ResAdapterModel`` replicas.

``OpenInferenceIngress`` (one replica) speaks the protocol over HTTP (FastAPI) and gRPC (Serve's gRPC
proxy calls its methods named after the RPCs), checks each request's bounds (``bounds.py``), bounds
the requests in the server (replicas x 2 x max batch size held by the replicas, plus ``--max-queue``
waiting; beyond: 503 / RESOURCE_EXHAUSTED at once), enforces the deadline, drains on shutdown
(``drain``) and keeps the Prometheus metrics (``GET /metrics``).
``ResAdapterModel`` replicas each hold a ``ResAdapterPipeline``, finish a warm-up generation before
Ray marks them running, check requests (400 with the CLI's message) and batch them.
"""

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from .. import __version__
from ..errors import ResAdapterRTError, first_line
from .grpc_protocol import check_model, infer_response, model_metadata_response, parse_grpc_request, service_pb2
from .options import GENERATION_DEFAULTS, ServeOptions, export_directory
from .protocol import HEADER_LENGTH, MODEL_NAME, MODEL_VERSION, InferRequest, encode_infer_response, error_body, \
    model_metadata, parse_infer_request

MODEL_DEPLOYMENT = "ResAdapterModel"
WARMUP_STEPS = 2

log = logging.getLogger(__name__)
api = FastAPI(title="resadapter-rt", docs_url=None, redoc_url=None)


@serve.deployment(health_check_period_s=1, health_check_timeout_s=30, graceful_shutdown_timeout_s=5)
class ResAdapterModel:
    """One replica: a pipeline over ``backend``, warmed up by one generation, serving batched requests."""

    def __init__(self, artifacts: str, backend: str, max_batch_size: int) -> None:
        from ..runtime.pipeline import ResAdapterPipeline
        from .batching import Batcher, generate_batch, prepare_request

        self.pipe = ResAdapterPipeline.from_artifacts(artifacts, backend=backend)
        # warm-up: Ray counts this replica as running (and readiness true) only after it
        generate_batch(self.pipe, [prepare_request(self.pipe, {"prompt": "warm-up", "steps": WARMUP_STEPS})])
        self.batcher = Batcher(self.pipe, max_batch_size)

    async def generate(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """``{"image": uint8 [H, W, 3], "stats": {...}}``, or ``{"error": one line}`` for bad parameters."""
        from .batching import prepare_request

        try:
            request = prepare_request(self.pipe, parameters)
        except ResAdapterRTError as exc:
            return {"error": str(exc)}
        image, stats = await self.batcher.submit(request)
        return {"image": image, "stats": stats}

    def stats(self) -> dict[str, Any]:
        """This replica's process id and Ray node, its jobs in hand, and how many it dropped (their callers were gone)."""
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "active": self.batcher.active,
                "dropped": self.batcher.dropped}


class _Metrics:
    """Prometheus metrics of the service, in their own registry (served at ``GET /metrics``)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("resadapter_requests", "infer requests by outcome", ["outcome"], registry=self.registry)
        self.queue_depth = Gauge("resadapter_queue_depth", "infer requests accepted and not yet answered "
                                 "(waiting or generating)", registry=self.registry)
        self.latency = Histogram("resadapter_request_latency_seconds", "infer latency of answered requests",
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320), registry=self.registry)
        self.batch_size = Histogram("resadapter_batch_size", "requests per UNet batch, once per request",
                                    buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)
        self.steps_per_second = Gauge("resadapter_unet_steps_per_second", "UNet steps per second of the last batch "
                                      "(image-steps: batch size x steps / UNet seconds)", registry=self.registry)
        self.unet_steps = Counter("resadapter_unet_image_steps", "UNet image-steps of answered requests",
                                  registry=self.registry)
        for outcome in (*HTTP_STATUS, "cancelled"):
            self.requests.labels(outcome)

    def record(self, stats: dict[str, Any]) -> None:
        self.batch_size.observe(stats["batch_size"])
        self.unet_steps.inc(stats["steps"])
        if stats["unet_seconds"] > 0:
            self.steps_per_second.set(stats["batch_size"] * stats["steps"] / stats["unet_seconds"])


HTTP_STATUS = {"ok": 200, "bad_request": 400, "too_large": 413, "queue_full": 503, "draining": 503, "unavailable": 503,
               "timeout": 504, "error": 500}
GRPC_CODE = {"bad_request": "INVALID_ARGUMENT", "too_large": "INVALID_ARGUMENT", "queue_full": "RESOURCE_EXHAUSTED",
             "draining": "UNAVAILABLE", "unavailable": "UNAVAILABLE", "timeout": "DEADLINE_EXCEEDED", "error": "INTERNAL"}


@dataclass
class Answer:
    """How an infer request ended (an ``outcome`` of ``HTTP_STATUS``), for either face to encode."""

    outcome: str
    message: str = ""
    image: np.ndarray | None = None


class _Closed(Exception):
    """The drain timeout passed while the request was in flight."""


class _TooLarge(ResAdapterRTError):
    """The body is over ``--max-body-bytes`` (HTTP 413)."""


def _known_model(request: Any, grpc_context: Any) -> bool:
    """``ModelReady``/``ModelMetadata`` of another model: NOT_FOUND with the one-line reason."""
    import grpc

    try:
        check_model(request.name, request.version)
    except ResAdapterRTError as exc:
        grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
        grpc_context.set_details(str(exc))
        return False
    return True


def _error(status: int, message: str) -> Response:
    return Response(content=error_body(message), status_code=status, media_type="application/json")


@serve.deployment(max_ongoing_requests=100_000, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class OpenInferenceIngress:
    """The protocol's faces: KServe v2 HTTP (FastAPI routes) and ``inference.GRPCInferenceService`` (the methods
    named after its RPCs, called by Serve's gRPC proxy), one parsing, bounds, queue, deadline and metrics for both."""

    def __init__(self, model: DeploymentHandle, options: ServeOptions, training_size: int) -> None:
        self.model, self.timeout, self.backend, self.bounds = model, options.timeout, options.backend, options.bounds
        held = 2 * options.max_batch_size  # per replica: one batch generating, the next one forming
        self.max_in_flight = options.replicas * held + options.max_queue
        self.training_size = training_size
        self.in_flight = 0  # accepted, not yet answered (this ingress is the only one: the count is the server's)
        self.draining = False  # set by drain(): readiness false, new requests refused
        self.closed = asyncio.Event()  # set when the drain timeout passed: requests still in flight are answered 503
        self.metrics = _Metrics()

    async def _replicas_running(self) -> int:
        """Model replicas Ray counts as running (each finished its warm-up and passes its health check)."""
        status = await asyncio.to_thread(serve.status)
        application = status.applications.get(serve.get_replica_context().app_name)
        deployment = application.deployments.get(MODEL_DEPLOYMENT) if application else None
        return deployment.replica_states.get("RUNNING", 0) if deployment else 0

    async def _ready(self) -> bool:
        return not self.draining and await self._replicas_running() > 0

    # -- the request path both faces share --------------------------------------------------------
    async def _generate(self, parsed: InferRequest) -> Answer:
        """Bounds, the queue bound, the deadline and the drain for a parsed request; the image or why not."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

        if self.draining:
            return Answer("draining", "the server is shutting down and takes no new requests; retry on another instance")
        try:
            self.bounds.check(parsed.parameters, self.training_size, GENERATION_DEFAULTS["steps"])
        except ResAdapterRTError as exc:
            return Answer("bad_request", str(exc))
        if self.in_flight >= self.max_in_flight:
            return Answer("queue_full", f"the queue is full ({self.in_flight} requests in the server, --max-queue reached); retry later")
        deadline = min(t for t in (self.timeout, parsed.timeout_s) if t is not None)
        self.in_flight += 1
        self.metrics.queue_depth.set(self.in_flight)
        response = self.model.generate.remote(parsed.parameters)
        try:
            result = await asyncio.wait_for(self._result_unless_closed(response), deadline)
        except asyncio.TimeoutError:
            response.cancel()
            return Answer("timeout", f"the deadline of {deadline:g} s passed before the image was ready; the request was dropped")
        except _Closed:
            response.cancel()
            return Answer("draining", "the server shut down before the image was ready (the drain timeout passed); "
                                      "retry on another instance")
        except asyncio.CancelledError:  # the client went away: Ray Serve cancels this handler
            response.cancel()
            self.metrics.requests.labels("cancelled").inc()
            raise
        except (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError) as exc:  # its replica died
            return Answer("unavailable", f"the replica serving this request stopped ({type(exc).__name__}); retry: the "
                                         "others keep serving and Ray restarts it")
        except Exception as exc:  # a failed generation fails its request, not the server
            log.exception("infer failed")
            return Answer("error", f"unexpected {type(exc).__name__}: {first_line(exc, 300)} (a bug in resadapter-rt: see "
                                   "the replica's log)")
        finally:
            self.in_flight -= 1
            self.metrics.queue_depth.set(self.in_flight)
        if "error" in result:
            return Answer("bad_request", result["error"])
        self.metrics.record(result["stats"])
        return Answer("ok", image=result["image"])

    async def _result_unless_closed(self, response: Any) -> dict[str, Any]:
        result, closed = asyncio.ensure_future(response), asyncio.ensure_future(self.closed.wait())
        try:
            done, _ = await asyncio.wait({result, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not result.done():
                result.cancel()
        if result not in done:
            raise _Closed
        return result.result()

    def _count(self, answer: Answer, started: float) -> Answer:
        self.metrics.requests.labels(answer.outcome).inc()
        if answer.outcome == "ok":
            self.metrics.latency.observe(time.perf_counter() - started)
        return answer

    async def drain(self, timeout: float) -> dict[str, int]:
        """Shutdown, step one: readiness false and new requests refused at once; requests in flight run for up to
        ``timeout`` seconds, then are answered 503. Returns how many were in flight and how many were cut."""
        self.draining = True
        in_flight, until = self.in_flight, time.monotonic() + timeout
        while self.in_flight and time.monotonic() < until:
            await asyncio.sleep(0.05)
        cut = self.in_flight
        self.closed.set()
        while self.in_flight:  # the cut ones take their 503 now
            await asyncio.sleep(0.05)
        return {"in_flight": in_flight, "cut": cut}

    # -- HTTP -------------------------------------------------------------------------------------
    @api.get("/v2/health/live")
    async def live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> Response:
        ready = await self._ready()
        return Response(content=f'{{"ready": {str(ready).lower()}}}', status_code=200 if ready else 503,
                        media_type="application/json")

    @api.get("/v2")
    async def server_metadata(self) -> dict:
        return {"name": "resadapter-rt", "version": __version__, "extensions": ["binary_tensor_data"]}

    @api.get(f"/v2/models/{MODEL_NAME}")
    @api.get(f"/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}")
    async def metadata(self) -> dict:
        return model_metadata(f"resadapter-rt/{self.backend}")

    @api.get(f"/v2/models/{MODEL_NAME}/ready")
    @api.get(f"/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/ready")
    async def model_ready(self) -> Response:
        return await self.ready()

    @api.get("/metrics")
    async def prometheus(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(content=generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.post(f"/v2/models/{MODEL_NAME}/infer")
    @api.post(f"/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer")
    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
            parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
        except _TooLarge as exc:
            answer = Answer("too_large", str(exc))
        except ResAdapterRTError as exc:
            answer = Answer("bad_request", str(exc))
        else:
            answer = await self._generate(parsed)
        self._count(answer, started)
        if answer.outcome != "ok":
            return _error(HTTP_STATUS[answer.outcome], answer.message)
        content, headers = encode_infer_response(answer.image, parsed.request_id, parsed.binary_output)
        return Response(content=content, headers=headers, status_code=200)

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused before it is read past ``--max-body-bytes`` (by its Content-Length, else as it streams)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit():
            self._check_body(int(declared))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            self._check_body(len(body))
        return bytes(body)

    def _check_body(self, size: int) -> None:
        try:
            self.bounds.check_body(size)
        except ResAdapterRTError as exc:
            raise _TooLarge(str(exc)) from None

    # -- gRPC: inference.GRPCInferenceService -----------------------------------------------------
    async def ServerLive(self, request: Any) -> Any:  # noqa: N802 (the RPC's name)
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any) -> Any:  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=await self._ready())

    async def ModelReady(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        if not _known_model(request, grpc_context):
            return service_pb2.ModelReadyResponse()
        return service_pb2.ModelReadyResponse(ready=await self._ready())

    async def ServerMetadata(self, request: Any) -> Any:  # noqa: N802
        return service_pb2.ServerMetadataResponse(name="resadapter-rt", version=__version__, extensions=["binary_tensor_data"])

    async def ModelMetadata(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        if not _known_model(request, grpc_context):
            return service_pb2.ModelMetadataResponse()
        return model_metadata_response(model_metadata(f"resadapter-rt/{self.backend}"))

    async def ModelInfer(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        import grpc
        started = time.perf_counter()
        try:
            self.bounds.check_body(request.ByteSize())
        except ResAdapterRTError as exc:
            answer = Answer("too_large", str(exc))
        else:
            try:
                parsed = parse_grpc_request(request)
            except ResAdapterRTError as exc:
                answer = Answer("bad_request", str(exc))
            else:
                answer = await self._generate(parsed)
        self._count(answer, started)
        if answer.outcome == "ok":
            return infer_response(answer.image, parsed.request_id)
        grpc_context.set_code(getattr(grpc.StatusCode, GRPC_CODE[answer.outcome]))
        grpc_context.set_details(answer.message)
        return service_pb2.ModelInferResponse()


def build_app(options: ServeOptions) -> serve.Application:
    """The application for checked ``options``: ``options.replicas`` model replicas behind one ingress."""
    from ..export.exporter import read_manifest

    model = ResAdapterModel.options(num_replicas=options.replicas, max_ongoing_requests=2 * options.max_batch_size,
                                    ray_actor_options=options.replica_resources,
                                    ).bind(options.artifacts, options.backend, options.max_batch_size)
    training_size = int(read_manifest(export_directory(Path(options.artifacts)))["training_size"])
    return OpenInferenceIngress.bind(model, options, training_size)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For ``serve deploy`` / ``serve run`` config files: ``args`` are ``ServeOptions`` fields."""
    return build_app(ServeOptions(**args).checked())
