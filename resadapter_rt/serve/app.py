"""The Ray Serve application: an Open Inference Protocol ingress in front of ``ResAdapterModel`` replicas.

``OpenInferenceIngress`` (one replica, FastAPI) speaks the protocol, bounds the requests in the
server (replicas x 2 x max batch size held by the replicas, plus ``--max-queue`` waiting; beyond: 503
at once), enforces the deadline and keeps the Prometheus metrics (``GET /metrics``).
``ResAdapterModel`` replicas each hold a ``ResAdapterPipeline``, finish a warm-up generation before
Ray marks them running, check requests (400 with the CLI's message) and batch them.
"""

import asyncio
import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from .. import __version__
from ..errors import ResAdapterRTError
from .options import ServeOptions
from .protocol import HEADER_LENGTH, MODEL_NAME, MODEL_VERSION, encode_infer_response, error_body, model_metadata, parse_infer_request

APP_NAME = "resadapter"
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

    def stats(self) -> dict[str, int]:
        """This replica's process id, its jobs in hand, and how many it dropped (their callers were gone)."""
        return {"pid": os.getpid(), "active": self.batcher.active, "dropped": self.batcher.dropped}


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
        for outcome in ("ok", "bad_request", "queue_full", "timeout", "cancelled", "unavailable", "error"):
            self.requests.labels(outcome)

    def record(self, stats: dict[str, Any]) -> None:
        self.batch_size.observe(stats["batch_size"])
        self.unet_steps.inc(stats["steps"])
        if stats["unet_seconds"] > 0:
            self.steps_per_second.set(stats["batch_size"] * stats["steps"] / stats["unet_seconds"])


def _error(status: int, message: str) -> Response:
    return Response(content=error_body(message), status_code=status, media_type="application/json")


@serve.deployment(max_ongoing_requests=100_000, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class OpenInferenceIngress:
    """The HTTP face: KServe v2 health, metadata and infer for the model ``resadapter``."""

    def __init__(self, model: DeploymentHandle, timeout: float, backend: str, max_in_flight: int) -> None:
        self.model, self.timeout, self.backend, self.max_in_flight = model, timeout, backend, max_in_flight
        self.in_flight = 0  # accepted, not yet answered (this ingress is the only one: the count is the server's)
        self.metrics = _Metrics()

    async def _replicas_running(self) -> int:
        """Model replicas Ray counts as running (each finished its warm-up and passes its health check)."""
        status = await asyncio.to_thread(serve.status)
        application = status.applications.get(serve.get_replica_context().app_name)
        deployment = application.deployments.get(MODEL_DEPLOYMENT) if application else None
        return deployment.replica_states.get("RUNNING", 0) if deployment else 0

    @api.get("/v2/health/live")
    async def live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> Response:
        running = await self._replicas_running()
        return Response(content=f'{{"ready": {str(running > 0).lower()}}}', status_code=200 if running else 503,
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
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

        started, metrics = time.perf_counter(), self.metrics
        try:
            parsed = parse_infer_request(await request.body(), request.headers.get(HEADER_LENGTH))
        except ResAdapterRTError as exc:
            metrics.requests.labels("bad_request").inc()
            return _error(400, str(exc))
        if self.in_flight >= self.max_in_flight:
            metrics.requests.labels("queue_full").inc()
            return _error(503, f"the queue is full ({self.in_flight} requests in the server, --max-queue reached); retry later")
        deadline = min(t for t in (self.timeout, parsed.timeout_s) if t is not None)
        self.in_flight += 1
        metrics.queue_depth.set(self.in_flight)
        response = self.model.generate.remote(parsed.parameters)
        try:
            result = await asyncio.wait_for(response, deadline)
        except asyncio.TimeoutError:
            response.cancel()
            metrics.requests.labels("timeout").inc()
            return _error(504, f"the deadline of {deadline:g} s passed before the image was ready; the request was dropped")
        except asyncio.CancelledError:  # the client disconnected: Ray Serve cancels this handler
            response.cancel()
            metrics.requests.labels("cancelled").inc()
            raise
        except (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError) as exc:  # its replica died
            metrics.requests.labels("unavailable").inc()
            return _error(503, f"the replica serving this request stopped ({type(exc).__name__}); retry: the others "
                               "keep serving and Ray restarts it")
        except Exception as exc:  # a failed generation fails its request, not the server
            log.exception("infer failed")
            metrics.requests.labels("error").inc()
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            return _error(500, f"unexpected {type(exc).__name__}: {first} (a bug in resadapter-rt: see the replica's log)")
        finally:
            self.in_flight -= 1
            metrics.queue_depth.set(self.in_flight)
        if "error" in result:
            metrics.requests.labels("bad_request").inc()
            return _error(400, result["error"])
        metrics.requests.labels("ok").inc()
        metrics.latency.observe(time.perf_counter() - started)
        metrics.record(result["stats"])
        body, headers = encode_infer_response(result["image"], parsed.request_id, parsed.binary_output)
        return Response(content=body, headers=headers, status_code=200)


def build_app(options: ServeOptions) -> serve.Application:
    """The application for checked ``options``: ``options.replicas`` model replicas behind one ingress."""
    held = 2 * options.max_batch_size  # per replica: one batch generating, the next one forming
    model = ResAdapterModel.options(num_replicas=options.replicas, max_ongoing_requests=held,
                                    ray_actor_options=options.replica_resources,
                                    ).bind(options.artifacts, options.backend, options.max_batch_size)
    return OpenInferenceIngress.bind(model, options.timeout, options.backend, options.replicas * held + options.max_queue)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For ``serve deploy`` / ``serve run`` config files: ``args`` are ``ServeOptions`` fields."""
    return build_app(ServeOptions(**args).checked())


def _check_local_resources(options: ServeOptions, available: dict[str, float]) -> None:
    for resource, per_replica in (("GPU", options.replica_resources.get("num_gpus", 0)),
                                  ("CPU", options.replica_resources["num_cpus"])):
        needed = options.replicas * per_replica
        if available.get(resource, 0) < needed:
            fix = "use --backend onnxruntime, or" if resource == "GPU" else "use fewer --replicas, or"
            raise ResAdapterRTError(f"--backend {options.backend} with --replicas {options.replicas} needs {needed:g} {resource}(s) "
                                    f"(one per replica); this machine has {available.get(resource, 0):g} for Ray; {fix} "
                                    f"--address to join a Ray cluster that has them")


@contextmanager
def serving(options: ServeOptions, num_cpus: int | None = None, quiet: bool = True) -> Iterator[str]:
    """Ray (local, or joined at ``options.address``), Serve's HTTP proxy and the application, shut down on exit.

    Yields the base URL once the replicas finished their warm-up. ``quiet``: replica logs stay in Ray's log files.
    """
    import ray

    joined = options.address is not None
    ray.init(address=options.address, num_cpus=None if joined else num_cpus, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=not quiet)
    try:
        if not joined:  # a local Ray would wait forever for resources it does not have
            _check_local_resources(options, ray.cluster_resources())
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build_app(options), name=APP_NAME, route_prefix="/")
        yield f"http://{options.host}:{options.port}"
    finally:
        try:
            if joined:
                serve.delete(APP_NAME)  # leave the cluster and its other applications running
            else:
                serve.shutdown()
        finally:
            ray.shutdown()


def serve_forever(options: ServeOptions) -> int:
    """``resadapter-rt serve``: run until Ctrl-C (exit 0), then shut Serve (and a local Ray) down; Ctrl-C while
    starting exits 130."""
    import sys

    started = False
    try:
        with serving(options, quiet=False) as url:
            print(f"serving {options.artifacts} ({options.backend}, {options.replicas} replica(s)) at {url}: "
                  f"Open Inference Protocol model {MODEL_NAME!r}, metrics at {url}/metrics; Ctrl-C stops", flush=True)
            started = True
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped" if started else "error: interrupted while starting; the server was shut down", file=sys.stderr)
        return 0 if started else 130
