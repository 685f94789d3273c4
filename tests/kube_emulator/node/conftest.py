"""Fixtures: the emulated API server with the local scheduler, kubelet and nodes, in-loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kube_emulator.apiserver.server import ApiServer
from kube_emulator.client import ApiClient, cancel_all
from kube_emulator.node.kubelet import Kubelet
from kube_emulator.node.nodes import NodePool
from kube_emulator.node.runtime import RuntimeSettings
from kube_emulator.node.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class MiniCluster:
    server: ApiServer
    client: ApiClient
    kubelet: Kubelet
    nodes: NodePool

    async def wait_for(self, path: str, check: Callable[[dict[str, Any] | None], bool],
                       timeout: float = 60.0) -> dict[str, Any] | None:
        """Poll ``path`` until ``check(obj or None-if-absent)`` holds; fail with the last
        state seen. Polling (not sleeping for a fixed time) keeps this robust under load."""
        deadline = asyncio.get_running_loop().time() + timeout
        last: dict[str, Any] | None = None
        while True:
            try:
                last = await self.client.get(path)
            except Exception as exc:
                if getattr(exc, "code", None) != 404:
                    raise
                last = None
            if check(last):
                return last
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"timed out waiting on {path}; last state: {last}")
            await asyncio.sleep(0.05)


async def start_mini_cluster(tmp_path: Path, nodes: int, gpus: int) -> tuple[
        MiniCluster, list[asyncio.Task[Any]], Callable[[], Awaitable[None]]]:
    """The pieces LocalCluster composes, minus etcd and the operator."""
    kubelet_box: list[Kubelet] = []
    server = ApiServer(log_source=lambda ns, name, q: kubelet_box[0].log_source(ns, name, q))
    await server.start()
    client = ApiClient(server.url)
    kubelet = Kubelet(client, tmp_path, ROOT,
                      settings=RuntimeSettings(termination_log_env="TERMINATION_LOG"))
    kubelet_box.append(kubelet)
    pool = NodePool(client)
    await pool.create(nodes, gpus)
    ready = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(Scheduler(client).run(ready[0])),
             asyncio.create_task(kubelet.run(ready[1]))]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 60)

    async def stop() -> None:
        # Each step bounded: a hang here must fail loudly with the stuck tasks, not eat the
        # whole pytest timeout.
        for name, step in (("controllers", lambda: cancel_all(tasks)),
                           ("kubelet", kubelet.shutdown), ("client", client.close),
                           ("apiserver", server.stop)):
            try:
                await asyncio.wait_for(step(), 30)
            except TimeoutError:
                stuck = "\n".join(f"{t.get_name()}: {t.get_stack(limit=3)}"
                                  for t in asyncio.all_tasks())
                pytest.fail(f"stopping the {name} took over 30s; tasks:\n{stuck}")

    return MiniCluster(server, client, kubelet, pool), tasks, stop


@pytest.fixture
async def mini(tmp_path: Path) -> AsyncIterator[MiniCluster]:
    """One node with one GPU."""
    cluster, _, stop = await start_mini_cluster(tmp_path, nodes=1, gpus=1)
    try:
        yield cluster
    finally:
        await stop()
