"""Stage 5, serving: ``resadapter-rt serve`` — Ray Serve replicas of ``ResAdapterPipeline`` behind the
Open Inference Protocol (KServe v2) over HTTP and gRPC, with per-request bounds, request batching of
equal sizes, a bounded queue, per-request deadlines, readiness that follows the replicas, graceful
shutdown and Prometheus metrics.

It may import ``runtime`` and the stages before it; never ``cli`` or ``bench``. Ray, FastAPI and
``tritonclient`` are imported only by the modules that need them (``pip install 'resadapter-rt[serve]'``).
"""

from ..errors import ResAdapterRTError

SERVE_EXTRA = "pip install 'resadapter-rt[serve]'"


def require_serving_libraries() -> None:
    """One line naming the extra when Ray Serve, FastAPI, tritonclient or grpcio (its gRPC stubs) are missing."""
    try:
        import fastapi  # noqa: F401
        import ray.serve  # noqa: F401
        import tritonclient.grpc.service_pb2_grpc  # noqa: F401
        import tritonclient.utils  # noqa: F401
    except ImportError as exc:
        raise ResAdapterRTError(f"serving needs ray[serve], fastapi, tritonclient and grpcio ({exc.name} is missing); "
                                f"install them with {SERVE_EXTRA}") from None
