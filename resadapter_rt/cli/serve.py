"""``resadapter-rt serve``: an export served over the Open Inference Protocol on Ray Serve."""

from __future__ import annotations

import argparse

from ..serve.bounds import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_STEPS


def add_parser(commands) -> None:
    serve = commands.add_parser("serve", help="serve an export over the Open Inference Protocol (KServe v2 HTTP and gRPC) on Ray Serve")
    serve.add_argument("--artifacts", required=True, help="export or engine directory")
    serve.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) | torch | tensorrt | onnxruntime-tensorrt")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address (default %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default %(default)s)")
    serve.add_argument("--replicas", type=int, default=1, help="model replicas, one GPU each for GPU backends (default 1)")
    serve.add_argument("--max-batch-size", type=int, default=4, help="equal requests per UNet batch (default 4)")
    serve.add_argument("--max-queue", type=int, default=32, help="requests waiting for a replica; beyond: HTTP 503 (default 32)")
    serve.add_argument("--timeout", type=float, default=300.0, help="per-request deadline in seconds; beyond: HTTP 504 (default 300)")
    serve.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting a local Ray")
    serve.add_argument("--grpc-port", type=int, help="also serve the protocol's gRPC service (inference.GRPCInferenceService, "
                       "as tritonclient.grpc speaks it) on this port (default: HTTP only)")
    serve.add_argument("--max-pixels", type=int, help="largest width x height one request may ask for; beyond: HTTP 400 / "
                       "gRPC INVALID_ARGUMENT (default: from the artifacts: the largest engine profile, else the export's range)")
    serve.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, help="most steps one request may ask for (default %(default)s)")
    serve.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                       help="largest request body; beyond: HTTP 413 before parsing (default %(default)s)")
    serve.add_argument("--drain-timeout", type=float, default=30.0, help="on SIGTERM/SIGINT, seconds the requests in flight "
                       "may still run before they are answered 503 (default %(default)s)")
    serve.add_argument("--replica-cpus", type=float, default=1.0, help="Ray CPUs per model replica on CPU backends (default 1)")
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import require_serving_libraries
    from ..serve.options import ServeOptions

    options = ServeOptions(artifacts=args.artifacts, backend=args.backend, host=args.host, port=args.port, replicas=args.replicas,
                           max_batch_size=args.max_batch_size, max_queue=args.max_queue, timeout=args.timeout,
                           address=args.address, grpc_port=args.grpc_port, max_pixels=args.max_pixels, max_steps=args.max_steps,
                           max_body_bytes=args.max_body_bytes, drain_timeout=args.drain_timeout,
                           replica_cpus=args.replica_cpus).checked()
    require_serving_libraries()
    from ..serve.lifecycle import serve_forever

    return serve_forever(options)
