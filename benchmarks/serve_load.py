"""Load test of `resadapter-rt serve`, HTTP and gRPC side by side: 64 requests from 8 concurrent tritonclient clients.

Exports the built-in tiny SD1.5 model (dynamic alpha) to a temporary directory, then for batching off
(--max-batch-size 1) and on (--max-batch-size 8) starts the server (Ray Serve, local Ray, loopback,
HTTP and gRPC) and, on that one server, sends 64 infer requests from 8 client threads over each
protocol in turn (tritonclient.http with the binary data extension, tritonclient.grpc), sizes
alternating between two, each request with its own seed; the protocol order alternates per repeat,
and off and on alternate --repeats times (the machine's load drifts). Records per run: successes,
p50/p95 latency, throughput; per server the batch sizes it formed (its /metrics); ratios of the
medians (gRPC/HTTP per batching setting, on/off per protocol), in serve_load.json: in a new directory
under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the committed benchmarks/results/serve_load.json.
python benchmarks/serve_load.py [--requests 64] [--clients 8] [--steps 8] [--sizes 256x256,320x192] [--replicas 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PROTOCOLS = ("http", "grpc")


def one_request(protocol: str, address: str, width: int, height: int, steps: int, seed: int) -> tuple[bool, float]:
    """One infer request over ``protocol`` (a fresh tritonclient client, as a separate caller would have)."""
    import importlib

    client_module = importlib.import_module(f"tritonclient.{protocol}")
    inputs = []
    for name, value, dtype in (("prompt", b"a lighthouse at dusk", "BYTES"), ("width", width, "INT64"),
                               ("height", height, "INT64"), ("steps", steps, "INT64"), ("seed", seed, "INT64")):
        tensor = client_module.InferInput(name, [1], dtype)
        tensor.set_data_from_numpy(np.array([value], dtype=np.object_ if dtype == "BYTES" else np.int64))
        inputs.append(tensor)
    started = time.perf_counter()
    options = {"network_timeout": 600} if protocol == "http" else {}
    with client_module.InferenceServerClient(address, **options) as client:
        image = client.infer("resadapter", inputs, **({} if protocol == "http" else {"client_timeout": 600})).as_numpy("image")
    return image.shape == (height, width, 3), time.perf_counter() - started


def batch_sizes(url: str) -> dict[str, float]:
    """How many requests ran in a batch of each size (from the histogram's cumulative buckets)."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    buckets = {line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line.startswith("resadapter_batch_size_bucket")}
    return buckets


def timed_load(protocol: str, address: str, args: argparse.Namespace, sizes: list[tuple[int, int]]) -> dict:
    """``args.requests`` requests from ``args.clients`` threads over ``protocol``: successes, throughput, p50/p95."""
    jobs = [(sizes[i % len(sizes)], i) for i in range(args.requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(lambda job: one_request(protocol, address, *job[0], args.steps, job[1]), jobs))
    wall = time.perf_counter() - started
    latencies = sorted(seconds for _, seconds in results)
    return {"protocol": protocol, "succeeded": sum(ok for ok, _ in results), "requests": len(results),
            "wall_seconds": round(wall, 3), "throughput_images_per_s": round(len(results) / wall, 3),
            "p50_latency_s": round(statistics.median(latencies), 3),
            "p95_latency_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3)}


def run(artifacts: Path, max_batch_size: int, args: argparse.Namespace, sizes: list[tuple[int, int]], first: str) -> dict:
    """One server: a timed load over each protocol, ``first`` first."""
    from resadapter_rt.serve.lifecycle import serving
    from resadapter_rt.serve.options import ServeOptions

    options = ServeOptions(artifacts=str(artifacts), port=free_port(), grpc_port=free_port(), replicas=args.replicas,
                           max_batch_size=max_batch_size, max_queue=args.requests, timeout=600).checked()
    addresses = {"http": f"127.0.0.1:{options.port}", "grpc": f"127.0.0.1:{options.grpc_port}"}
    with serving(options, num_cpus=max(2, args.replicas)) as url:
        for protocol in PROTOCOLS:  # first request per size outside the timing (ONNX Runtime plans per shape)
            for width, height in sizes:
                one_request(protocol, addresses[protocol], width, height, args.steps, 0)
        order = [first] + [p for p in PROTOCOLS if p != first]
        loads = {protocol: timed_load(protocol, addresses[protocol], args, sizes) for protocol in order}
        histogram = batch_sizes(url)
    return {"max_batch_size": max_batch_size, "order": order, "runs": loads, "batch_size_histogram_cumulative": histogram}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sizes", default="256x256,320x192")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json

    add_output_arguments(parser)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]

    from resadapter_rt.export.exporter import ExportOptions, export_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(tmp) / "tiny-sd15"
        export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic",
                                      validation_sizes=((128, 128, 1),)), artifacts, progress=lambda m: None)
        servers = {"off": [], "on": []}
        for repeat in range(args.repeats):
            first = PROTOCOLS[repeat % 2]
            servers["off"].append(run(artifacts, 1, args, sizes, first))
            servers["on"].append(run(artifacts, 8, args, sizes, first))

    def median(batching: str, protocol: str, key: str) -> float:
        return statistics.median(server["runs"][protocol][key] for server in servers[batching])

    keys = (("throughput", "throughput_images_per_s"), ("p50_latency", "p50_latency_s"), ("p95_latency", "p95_latency_s"))
    record = {
        "what": f"{args.requests} requests, {args.clients} concurrent clients, sizes {args.sizes}, {args.steps} steps, "
                f"tiny SD1.5 export, onnxruntime CPU, {args.replicas} replica(s); HTTP (binary data) and gRPC on each server",
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "batching_off": servers["off"], "batching_on": servers["on"],
        "medians": {f"{batching}/{protocol}": {name: round(median(batching, protocol, key), 3) for name, key in keys}
                    for batching in servers for protocol in PROTOCOLS},
        "ratio_grpc_over_http_of_medians": {
            batching: {name: round(median(batching, "grpc", key) / median(batching, "http", key), 3) for name, key in keys}
            for batching in servers},
        "ratio_on_over_off_of_medians": {
            protocol: {name: round(median("on", protocol, key) / median("off", protocol, key), 3) for name, key in keys}
            for protocol in PROTOCOLS},
    }
    out = write_json(output_dir(args, "serve_load") / "serve_load.json", record)
    print(json.dumps(record, indent=2))
    print(f"wrote {out}")
    return 0 if all(r["succeeded"] == args.requests for ss in servers.values() for s in ss for r in s["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
