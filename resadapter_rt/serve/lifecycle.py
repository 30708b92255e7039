"""Starting and stopping the service: Ray (local or joined), Serve's HTTP and gRPC proxies, the application,
and the graceful shutdown on SIGTERM/SIGINT.

Shutdown: readiness turns false and new requests get 503 at once (the ingress's ``drain``), requests in
flight finish for up to ``--drain-timeout`` seconds (then they are answered 503), Serve and a local Ray
are shut down, and ``resadapter-rt serve`` exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from ..errors import ResAdapterRTError, first_line
from .bounds import artifact_max_pixels
from .options import ServeOptions

APP_NAME = "resadapter"
RESPONSE_SETTLE_S = 1.0  # after the drain: the proxies write the last answers before they stop


def _check_local_resources(options: ServeOptions, available: dict[str, float]) -> None:
    for resource, per_replica in (("GPU", options.replica_resources.get("num_gpus", 0)),
                                  ("CPU", options.replica_resources["num_cpus"])):
        needed = options.replicas * per_replica
        if available.get(resource, 0) < needed:
            fix = "use --backend onnxruntime, or" if resource == "GPU" else "use fewer --replicas, or"
            raise ResAdapterRTError(f"--backend {options.backend} with --replicas {options.replicas} needs {needed:g} {resource}(s) "
                                    f"(one per replica); this machine has {available.get(resource, 0):g} for Ray; {fix} "
                                    f"--address to join a Ray cluster that has them")


def drain(timeout: float) -> dict[str, int]:
    """Tell the ingress to drain (see ``OpenInferenceIngress.drain``); how many requests were in flight and cut."""
    from ray import serve

    handle = serve.get_app_handle(APP_NAME)
    return handle.drain.remote(timeout).result(timeout_s=timeout + 60)


@contextmanager
def serving(options: ServeOptions, num_cpus: int | None = None, quiet: bool = True,
            proxy_location: str = "EveryNode") -> Iterator[str]:
    """Ray (local, or joined at ``options.address``), Serve's proxies and the application, shut down on exit.

    Yields the HTTP base URL once the replicas finished their warm-up (gRPC, when ``options.grpc_port`` is set,
    listens on that port). The proxies run on every node (``proxy_location``; "HeadOnly" where several nodes
    share one machine's ports). ``quiet``: replica logs stay in Ray's log files.
    """
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    from .app import build_app
    from .grpc_protocol import SERVICER_FUNCTION

    joined = options.address is not None
    ray.init(address=options.address, num_cpus=None if joined else num_cpus, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=not quiet)
    try:
        if not joined:  # a local Ray would wait forever for resources it does not have
            _check_local_resources(options, ray.cluster_resources())
        grpc = None if options.grpc_port is None else gRPCOptions(port=options.grpc_port,
                                                                  grpc_servicer_functions=[SERVICER_FUNCTION])
        serve.start(http_options={"host": options.host, "port": options.port}, grpc_options=grpc, proxy_location=proxy_location)
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
    """``resadapter-rt serve``: run until SIGTERM or SIGINT, drain, shut down, exit 0; interrupted while starting: 130."""
    stop = threading.Event()
    try:
        with serving(options, quiet=False) as url:
            for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets its own SIGTERM handler
                signal.signal(signum, lambda *_: stop.set())
            grpc = "" if options.grpc_port is None else f", gRPC inference.GRPCInferenceService on port {options.grpc_port}"
            print(f"serving {options.artifacts} ({options.backend}, {options.replicas} replica(s)) at {url}: "
                  f"Open Inference Protocol model 'resadapter'{grpc}, metrics at {url}/metrics; SIGTERM or Ctrl-C stops",
                  flush=True)
            print(f"request bounds: {options.bounds.describe()} (pixels: "
                  f"{_pixel_source(options)}); --timeout {options.timeout:g} s, --drain-timeout {options.drain_timeout:g} s",
                  flush=True)
            while not stop.wait(1):
                pass
            began = time.monotonic()
            print("stopping: readiness is false, new requests get 503; draining the requests in flight", flush=True)
            try:
                counts = drain(options.drain_timeout)
            except Exception as exc:  # the ingress is gone: nothing left to drain, shut down all the same
                print(f"warning: could not drain ({type(exc).__name__}: {first_line(exc)}); shutting down", flush=True)
            else:
                time.sleep(RESPONSE_SETTLE_S)
                print(f"drained in {time.monotonic() - began:.1f} s: {counts['in_flight'] - counts['cut']} of "
                      f"{counts['in_flight']} request(s) in flight finished, {counts['cut']} answered 503", flush=True)
    except KeyboardInterrupt:  # only before the handlers above were set
        print("error: interrupted while starting; the server was shut down", file=sys.stderr)
        return 130
    print("stopped", flush=True)
    return 0


def _pixel_source(options: ServeOptions) -> str:
    from pathlib import Path

    maximum, source = artifact_max_pixels(Path(options.artifacts))
    return "--max-pixels as given" if options.max_pixels != maximum else source
