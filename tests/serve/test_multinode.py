"""`resadapter-rt serve --address` on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``):
replicas spread over the worker nodes, a worker node removed under load, every request answered, capacity back
when a node joins. Extended tier (three raylets on a 2-core machine: minutes)."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psutil

from serve_fixtures import free_port, infer_json, ray_processes, replica_stats, tiny_export, wait_for  # noqa: F401 (fixture)

DEADLINE_S = 60
REQUEST = dict(prompt="a cluster", width=128, height=128, steps=4)


def running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications["resadapter"].deployments["ResAdapterModel"]
    return deployment.replica_states.get("RUNNING", 0)


class Load:
    """``clients`` threads sending REQUEST until stopped; each answer as (phase, status, error, seconds)."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.phase, self.answers = url, "both nodes", []
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(clients)
        self.futures = [self.pool.submit(self._client, i) for i in range(clients)]

    def _client(self, index: int) -> None:
        seed = index * 10_000
        while not self.stop.is_set():
            phase = self.phase
            try:
                status, body, seconds = infer_json(self.url, {**REQUEST, "seed": seed}, timeout_us=DEADLINE_S * 1_000_000,
                                                   wait=DEADLINE_S + 30)
                self.answers.append((phase, status, body.get("error"), seconds))
            except OSError as exc:  # no answer at all: lost
                self.answers.append((phase, None, repr(exc), None))
            seed += 1

    def finish(self) -> None:
        self.stop.set()
        for future in self.futures:
            future.result(timeout=DEADLINE_S + 60)
        self.pool.shutdown()


def test_worker_node_removed_under_load_then_capacity_returns(tiny_export):
    from ray.cluster_utils import Cluster

    from resadapter_rt.serve.lifecycle import serving
    from resadapter_rt.serve.options import ServeOptions

    before = {p.pid for p in ray_processes()}
    # the head runs Serve's controller, proxy and ingress (0 CPUs); each worker node has room for one replica
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        options = ServeOptions(artifacts=str(tiny_export), port=free_port(), replicas=2, max_batch_size=2, max_queue=16,
                               timeout=DEADLINE_S, address=cluster.address).checked()
        with serving(options, proxy_location="HeadOnly") as url:
            nodes = {stats["node"] for stats in replica_stats(expected=2).values()}
            assert nodes == {w.node_id for w in workers}, "the two replicas are not one on each worker node"
            load = Load(url, clients=4)
            try:
                assert wait_for(lambda: len(load.answers) >= 8, timeout=120)
                load.phase = "one node removed"
                cluster.remove_node(workers[1], allow_graceful=False)
                assert wait_for(lambda: running_replicas() == 1, timeout=60, every=0.2), "Ray did not notice the lost node"
                settled = len(load.answers)
                assert wait_for(lambda: len(load.answers) >= settled + 8, timeout=120), "the surviving node stopped serving"
                load.phase = "node joined"
                joined = cluster.add_node(num_cpus=1)
                assert wait_for(lambda: running_replicas() == 2, timeout=300), "no replica started on the joined node"
                assert {s["node"] for s in replica_stats(expected=2).values()} == {workers[0].node_id, joined.node_id}
                settled = len(load.answers)
                assert wait_for(lambda: len(load.answers) >= settled + 8, timeout=120)
            finally:
                load.finish()
    finally:
        cluster.shutdown()
    counts = Counter((phase, status) for phase, status, _, _ in load.answers)
    print("requests by (phase, status):", dict(counts))  # the note quotes these counts
    lost = [a for a in load.answers if a[1] is None]
    assert not lost, lost
    assert {status for _, status, _, _ in load.answers} <= {200, 503}, counts
    refused = [error for _, status, error, _ in load.answers if status == 503]
    assert all(error.startswith("the replica serving this request stopped") for error in refused), refused
    assert max(seconds for _, _, _, seconds in load.answers) < DEADLINE_S + 5, "a request hung past its deadline"
    assert counts[("node joined", 200)] >= 8 and counts[("one node removed", 200)] >= 8
    _, alive = psutil.wait_procs([p for p in ray_processes() if p.pid not in before], timeout=30)
    assert not alive, f"processes left after the cluster shut down: {[(p.pid, p.name()) for p in alive]}"
