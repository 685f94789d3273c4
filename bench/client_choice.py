"""Which Kubernetes client the operator uses: event-loop lag and throughput of the two candidates.

kopf runs every handler on one asyncio event loop, so what matters for the operator is not only
how fast a client writes but how late the loop wakes while it does. This runs the operator's
hot write pattern, ``--pods`` pod creates each followed by a status patch, issued concurrently
from one event loop (at most ``--concurrency`` in flight, the operator's connection limit), with

- ``kubernetes`` (the official synchronous client) through ``asyncio.to_thread``, i.e. the
  loop's default executor, which is how async code calls a blocking client, and
- ``kubernetes_asyncio`` (the same generated client on aiohttp) awaited directly,

both reading answers as dicts (``_preload_content=False`` + JSON), as the operator does. A
ticker task sleeps 5 ms at a time and records how late it wakes: that is the lag every kopf
handler would see. The emulated API server runs in a child process so that it does not share
this process's GIL.

    python bench/client_choice.py [--pods 1000] [--concurrency 32]

Needs ``pip install kubernetes`` (a measurement-only dependency). One line per client, then
``throughput_async_over_sync=X lag_max_sync_over_async=Y lag_p99_sync_over_async=Z``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMESPACE = "default"
TICK = 0.005


def _serve(kubeconfig: str, ready: Any) -> None:
    from kube_emulator.apiserver.server import ApiServer

    async def main() -> None:
        server = ApiServer(pods_graceful=False, history_size=200)
        await server.start()
        server.write_kubeconfig(kubeconfig)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": "client-choice"}},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                                     "command": ["sleep", "3600"],
                                     "env": [{"name": f"E{i}", "value": "x" * 20}
                                             for i in range(20)]}]}}


STATUS = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


@dataclass
class Figures:
    client: str
    seconds: float
    lag_max_ms: float
    lag_p99_ms: float
    lag_mean_ms: float

    def requests_per_s(self, pods: int) -> float:
        return 2 * pods / self.seconds


async def measure(client: str, pods: int, concurrency: int,
                  one: Callable[[str], Awaitable[None]]) -> Figures:
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append(time.perf_counter() - before - TICK)

    gate = asyncio.Semaphore(concurrency)

    async def gated(name: str) -> None:
        async with gate:
            await one(name)

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    await asyncio.gather(*(gated(f"{client}-{i}") for i in range(pods)))
    seconds = time.perf_counter() - started
    done.set()
    await tick
    lags.sort()
    return Figures(client, seconds, 1000 * lags[-1],
                   1000 * lags[min(len(lags) - 1, int(0.99 * len(lags)))],
                   1000 * sum(lags) / len(lags))


async def with_sync_client(kubeconfig: str, pods: int, concurrency: int) -> Figures:
    import kubernetes

    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(kubeconfig, client_configuration=config)
    config.connection_pool_maxsize = concurrency
    api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(config))

    def write(name: str) -> None:
        created = api.create_namespaced_pod(NAMESPACE, pod(name), _preload_content=False)
        json.loads(created.data)
        patched = api.patch_namespaced_pod_status(
            name, NAMESPACE, STATUS, _preload_content=False,
            _content_type="application/merge-patch+json")
        json.loads(patched.data)

    async def one(name: str) -> None:
        await asyncio.to_thread(write, name)

    return await measure("kubernetes", pods, concurrency, one)


async def with_async_client(kubeconfig: str, pods: int, concurrency: int) -> Figures:
    import kubernetes_asyncio

    config = kubernetes_asyncio.client.Configuration()
    await kubernetes_asyncio.config.load_kube_config(kubeconfig, client_configuration=config)
    config.connection_pool_maxsize = concurrency
    async with kubernetes_asyncio.client.ApiClient(config) as client:
        api = kubernetes_asyncio.client.CoreV1Api(client)

        async def one(name: str) -> None:
            created = await api.create_namespaced_pod(NAMESPACE, pod(name),
                                                      _preload_content=False)
            json.loads(await created.read())
            patched = await api.patch_namespaced_pod_status(
                name, NAMESPACE, STATUS, _preload_content=False,
                _content_type="application/merge-patch+json")
            json.loads(await patched.read())

        return await measure("kubernetes_asyncio", pods, concurrency, one)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = str(Path(tmp) / "kubeconfig")
        ready = multiprocessing.Event()
        server = multiprocessing.Process(target=_serve, args=(kubeconfig, ready), daemon=True)
        server.start()
        try:
            if not ready.wait(60):
                raise SystemExit("the emulated API server did not start")
            results = [asyncio.run(with_sync_client(kubeconfig, args.pods, args.concurrency)),
                       asyncio.run(with_async_client(kubeconfig, args.pods, args.concurrency))]
        finally:
            server.terminate()
            server.join()
    for r in results:
        print(f"client={r.client} pods={args.pods} seconds={r.seconds:.2f} "
              f"requests_per_s={r.requests_per_s(args.pods):.0f} "
              f"loop_lag_max_ms={r.lag_max_ms:.1f} loop_lag_p99_ms={r.lag_p99_ms:.1f} "
              f"loop_lag_mean_ms={r.lag_mean_ms:.1f}")
    sync, async_ = results
    print(f"throughput_async_over_sync={sync.seconds / async_.seconds:.2f} "
          f"lag_max_sync_over_async={sync.lag_max_ms / max(async_.lag_max_ms, 0.01):.2f} "
          f"lag_p99_sync_over_async={sync.lag_p99_ms / max(async_.lag_p99_ms, 0.01):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
