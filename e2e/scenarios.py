"""The end-to-end scenarios, written once against :class:`e2e.driver.Driver`.

Each returns nothing and raises AssertionError with what went wrong. Jobs are small (a few
hundred samples, paced by ``--step-time``) so that a scenario takes well under a minute on
the local cluster, yet long enough that faults land mid-epoch.

Every membership path (scale down, up, down-and-up, autoscaler shrink, eviction, node loss,
worker / agent SIGKILL, hang, etcd restart, operator SIGKILL during a shrink) runs
``examples/train_elastic.py`` itself and ends with the same checks (:func:`finished_well`):
the job is Succeeded, every sample of every epoch (the last one included) was consumed exactly
once by the final model's lineage, the distinct world sizes of the committed steps are one of
the expected sequences (after the start-up growth, :func:`without_startup`), no two live pods
ever shared a replica index, and no process descended from a job pod is alive once the job has
ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from e2e.driver import ApplyRefused, Driver, Obj, job_manifest, wait_until
from elastic_operator.labels import REPLICA_INDEX
from launcher.training.audit import check_exactly_once, committed_world_sizes

DATASET = 384
BATCH = 16
EPOCHS = 2


def train_args(*, step_time: float = 0.15,
               epochs: int = EPOCHS) -> list[str]:
    return [f"--epochs={epochs}", f"--dataset-size={DATASET}", f"--batch-size={BATCH}",
            f"--step-time={step_time}"]


def make_job(driver: Driver, name: str, **kw: Any) -> Obj:
    # 0.3 s a step leaves epoch 0 about 2.7 s after step 3: room for a driver whose every
    # probe is a few kubectl calls (KubeDriver) to see a mid-epoch step on a loaded machine.
    step_time = kw.pop("step_time", 0.3)
    epochs = kw.pop("epochs", EPOCHS)
    kw.setdefault("replicas", 2)
    kw.setdefault("min_replicas", 1)
    kw.setdefault("max_replicas", 2)
    job = job_manifest(name, train_args=train_args(step_time=step_time, epochs=epochs),
                       index_log=f"{driver.shared_dir(name)}/indices.jsonl",
                       checkpoint_dir=f"{driver.shared_dir(name)}/checkpoints", **kw)
    return driver.decorate(job)


async def phase(driver: Driver, name: str) -> str | None:
    job = await driver.get_job(name)
    return None if job is None else (job.get("status") or {}).get("phase")


async def wait_phase(driver: Driver, name: str, wanted: str, timeout: float = 240.0) -> None:
    async def probe() -> bool:
        current = await phase(driver, name)
        if current == "Failed" and wanted != "Failed":
            job = await driver.get_job(name)
            raise AssertionError(f"job {name} failed: {(job or {}).get('status')}")
        return current == wanted
    await wait_until(probe, f"job {name} to reach {wanted}", timeout)


def steps(log: str) -> list[dict[str, Any]]:
    """The training script's JSON step events in a pod log."""
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "step":
                out.append(event)
    return out


async def latest_step(driver: Driver, name: str) -> dict[str, Any] | None:
    """The newest step event printed by any of the job's pods."""
    best: dict[str, Any] | None = None
    for pod in await driver.list_pods(name):
        for event in steps(await driver.pod_log(pod["metadata"]["name"])):
            if best is None or event["step"] >= best["step"]:
                best = event
    return best


async def index_records(driver: Driver, name: str) -> list[dict[str, Any]]:
    path = f"{driver.shared_dir(name)}/indices.jsonl"
    return [json.loads(line) for line in (await driver.read_file(path)).splitlines()
            if line.startswith("{")]


async def assert_exactly_once(driver: Driver, name: str, epochs: int = EPOCHS) -> None:
    records = await index_records(driver, name)
    report = check_exactly_once([r for r in records if r.get("event") in ("restore", "step")],
                                dataset_size=DATASET, epochs=epochs)
    assert report.ok, f"job {name}: samples not consumed exactly once: {report.problems}"


@contextlib.asynccontextmanager
async def no_duplicate_pods(driver: Driver, name: str) -> AsyncIterator[None]:
    """Watch the job's pods while the block runs: two live pods with one replica index (a
    double create, a lost delete) fail the scenario."""
    seen: list[str] = []

    async def watch() -> None:
        while True:
            pods = [p for p in await driver.list_pods(name)
                    if not p["metadata"].get("deletionTimestamp")
                    and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
            indices = sorted(p["metadata"]["labels"][REPLICA_INDEX] for p in pods)
            if len(indices) != len(set(indices)):
                seen.append(f"duplicate pods per replica index: {indices}")
            await asyncio.sleep(0.2)

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not seen, seen[:3]


def without_startup(world: tuple[int, ...], first: int) -> tuple[int, ...]:
    """``world`` without the start-up growth below ``first``, the job's initial size: the
    first round closes one settle period after its first members arrive, and in-place members
    train while a slower pod starts, then take it in (nobody waits for its interpreter). So
    ``(1, 2)`` is ``(2,)`` for a job of 2 replicas, never for one that starts at 1."""
    start = 0
    while start + 1 < len(world) and world[start] < world[start + 1] <= first:
        start += 1
    return world[start:]


async def finished_well(driver: Driver, name: str, sizes: Collection[tuple[int, ...]],
                        epochs: int = EPOCHS, any_world_up_to: int | None = None) -> None:
    """The checks every membership scenario ends with (see the module docstring).

    ``sizes``: the acceptable sequences of committed world sizes; with ``any_world_up_to``
    instead, any sequence of sizes in ``1..any_world_up_to`` (random events)."""
    await wait_phase(driver, name, "Succeeded")
    records = await index_records(driver, name)
    await assert_exactly_once(driver, name, epochs)
    last_epoch = max((r["epoch"] for r in records if r.get("event") == "step"), default=-1)
    assert last_epoch == epochs - 1, f"job {name}: the last epoch trained was {last_epoch}"
    world = without_startup(tuple(committed_world_sizes(records)),
                            first=min(expected[0] for expected in sizes) if sizes else 1)
    if any_world_up_to is None:
        assert world in sizes, f"job {name}: committed world sizes {world}, expected {sizes}"
    else:
        assert world and all(1 <= w <= any_world_up_to for w in world), (name, world)

    async def all_gone() -> bool:
        return not await driver.list_pods(name) and not await driver.job_processes(name)
    await wait_until(all_gone, f"the pods and processes of {name} to be gone", 120)


async def training_at(driver: Driver, name: str, world: int, min_step: int = 3,
                      timeout: float = 180) -> dict[str, Any]:
    """Wait for a step at world size ``world`` (and at least step ``min_step``) in epoch 0."""
    async def probe() -> dict[str, Any] | None:
        event = await latest_step(driver, name)
        ok = event and event["world_size"] == world and event["step"] >= min_step
        return event if ok else None
    event = await wait_until(probe, f"{name} to train at world size {world}", timeout)
    assert event["epoch"] == 0, f"too late for a mid-epoch event: {event}"
    return event


async def running_pods(driver: Driver, name: str) -> list[Obj]:
    """The job's Running workers that are not being deleted, by replica index."""
    pods = [p for p in await driver.list_pods(name)
            if (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]
    return sorted(pods, key=lambda p: int(p["metadata"]["labels"][REPLICA_INDEX]))


async def running_pod(driver: Driver, name: str) -> str:
    """The name of the job's Running worker with the highest replica index."""
    return str((await running_pods(driver, name))[-1]["metadata"]["name"])


async def job_succeeds_and_cleans_up(driver: Driver) -> None:
    """A job runs to Succeeded; its worker pods are deleted afterwards."""
    name = "e2e-basic"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name, step_time=0.02)])
        await finished_well(driver, name, {(2,)})


async def resize_events(driver: Driver, name: str) -> list[str]:
    """The reasons of the operator's Resized* events for job ``name``, oldest first: which
    path (in place, or by restart) its members took at each re-formation."""
    events = sorted(await driver.job_events(name),
                    key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return [e["reason"] for e in events if str(e.get("reason", "")).startswith("Resized")]


async def scale_down(driver: Driver) -> None:
    """``kubectl scale`` down mid-epoch: the survivor trains on at world size 1 to the end."""
    name = "e2e-scale-down"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name)])
        await training_at(driver, name, 2)
        await driver.scale(name, 1)
        await finished_well(driver, name, {(2, 1)})
    # The main job's script resizes in place (issue 15): the survivors kept their processes.
    assert "ResizedInPlace" in await resize_events(driver, name)


async def scale_up(driver: Driver) -> None:
    """``kubectl scale`` up mid-epoch: the newcomer joins and training ends at world size 2."""
    name = "e2e-scale-up"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name, replicas=1, epochs=3)])
        await training_at(driver, name, 1)
        await driver.scale(name, 2)
        await finished_well(driver, name, {(1, 2)}, epochs=3)
    # The main job's script resizes in place (issue 15): the survivors kept their processes.
    assert "ResizedInPlace" in await resize_events(driver, name)


async def scale_down_and_up(driver: Driver) -> None:
    """Scale down and up again within one second: the job ends at world size 2, and never has
    two pods for one index (the removed pod's name is taken until it is gone)."""
    name = "e2e-scale-flap"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name, epochs=3)])
        await training_at(driver, name, 2)
        await driver.scale(name, 1)
        await asyncio.sleep(0.5)
        await driver.scale(name, 2)
        await finished_well(driver, name, {(2,), (2, 1, 2)}, epochs=3)


async def autoscaler_shrinks_for_priority(driver: Driver) -> None:
    """A higher-priority job needs a GPU: the autoscaler shrinks the elastic job for it (never
    below its min); both jobs succeed."""
    name, urgent = "e2e-yield", "e2e-urgent"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name, autoscale=True, epochs=3)])
        await training_at(driver, name, 2)
        await driver.apply([make_job(driver, urgent, replicas=1, max_replicas=1, priority=100,
                                     step_time=0.05)])
        await finished_well(driver, name, {(2, 1), (2, 1, 2)}, epochs=3)
    await finished_well(driver, urgent, {(1,)})


async def worker_evicted(driver: Driver) -> None:
    """The GPU of one worker goes away (a failed device): the pod is evicted, not counted as a
    failure, and the job finishes at world size 1."""
    name = "e2e-evict"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name)])
        await training_at(driver, name, 2)
        await driver.evict(await running_pod(driver, name))
        await finished_well(driver, name, {(2, 1)})
    job = await driver.get_job(name)
    assert job is not None and job["status"]["restarts"] == 0, job and job["status"]


async def node_lost(driver: Driver) -> None:
    """The machine of one worker is lost (node deleted, its pods garbage-collected): the job
    trains on with the other and succeeds; the departure is not a failure."""
    name = "e2e-node-lost"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name)])
        await training_at(driver, name, 2, min_step=5)  # after the first checkpoint (step 4)
        await driver.lose_node(await running_pod(driver, name))
        await finished_well(driver, name, {(2, 1)})
    job = await driver.get_job(name)
    assert job is not None and job["status"]["restarts"] == 0, job and job["status"]


async def worker_killed_mid_epoch(driver: Driver) -> None:
    """SIGKILL the training process of one worker in the middle of epoch 0: the agent restarts
    it, the job recovers at the same size and succeeds."""
    name = "e2e-kill"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name)])
        await training_at(driver, name, 2)
        assert await driver.kill_training_processes(await running_pod(driver, name)) >= 1
        # In place, the survivor trains on alone while the restarted process starts, then
        # takes it back in; (2,) when the restart is quicker than the survivor's next step.
        await finished_well(driver, name, {(2,), (2, 1, 2)})


async def agent_killed(driver: Driver) -> None:
    """SIGKILL a worker's launcher: the pod fails (counted once), the survivor re-forms, the
    replacement rejoins, and the job succeeds."""
    name = "e2e-agent-kill"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name, epochs=3)])
        await training_at(driver, name, 2, min_step=5)  # after the first checkpoint (step 4)
        await driver.kill_agent(await running_pod(driver, name))
        # The replacement may rejoin before the survivor commits a step alone: (2,) is fine.
        await finished_well(driver, name, {(2,), (2, 1, 2)}, epochs=3)
    job = await driver.get_job(name)
    assert job is not None and job["status"]["restarts"] == 1, job and job["status"]


async def worker_hangs(driver: Driver) -> None:
    """A training process stops making progress (SIGSTOP): the agent's hang detection kills
    and restarts it; the job succeeds, back at the same size."""
    name = "e2e-hang"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name, hang_timeout=4.0)])
        await training_at(driver, name, 2)
        assert await driver.hang_training(await running_pod(driver, name)) >= 1
        # As after a kill: the survivor may train alone while the hung process is replaced.
        await finished_well(driver, name, {(2,), (2, 1, 2)})


async def etcd_restarted(driver: Driver) -> None:
    """The rendezvous etcd restarts mid-epoch: training goes on in the same round."""
    name = "e2e-etcd"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name)])
        await training_at(driver, name, 2)
        await driver.restart_etcd()
        await finished_well(driver, name, {(2,)})


async def operator_killed_during_shrink(driver: Driver) -> None:
    """The operator is SIGKILLed right after a scale-down: the restarted one finishes the
    shrink without duplicates and the job succeeds at world size 1."""
    name = "e2e-operator-shrink"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name)])
        await training_at(driver, name, 2)
        await driver.scale(name, 1)
        await driver.restart_operator()
        await finished_well(driver, name, {(2, 1)})


async def job_grows_into_new_gpus(driver: Driver) -> None:
    """Free GPUs appear (or, on a real cluster, the job is scaled): the job grows to use them,
    keeps training and succeeds."""
    name = "e2e-grow"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name, replicas=1, max_replicas=3, autoscale=True,
                                     step_time=0.3, epochs=3)])
        await training_with(driver, name, lambda world: True)
        if driver.can_add_gpus:
            await driver.add_gpus(2)
        else:
            await driver.scale(name, 3)
        await training_with(driver, name, lambda world: world == 3)
        job = await driver.get_job(name)
        assert job is not None and job["spec"]["replicas"] == 3, job
        # The autoscaler may take the second node's free GPU before the first step.
        await finished_well(driver, name, {(1, 3), (2, 3), (1, 2, 3)}, epochs=3)


async def training_with(driver: Driver, name: str, world: Callable[[int], bool]) -> None:
    async def probe() -> bool:
        event = await latest_step(driver, name)
        return bool(event and world(event["world_size"]))
    await wait_until(probe, f"{name} to train at the expected world size", 180)


async def operator_restarted_mid_run(driver: Driver) -> None:
    """The operator is SIGKILLed and restarted while a job trains: the job still succeeds and
    never has two pods for one replica index."""
    name = "e2e-operator"
    async with no_duplicate_pods(driver, name):
        await driver.apply([make_job(driver, name)])
        await training_at(driver, name, 2)
        await driver.restart_operator()
        await finished_well(driver, name, {(2,)})


async def invalid_job_is_refused(driver: Driver) -> None:
    """A job with minReplicas > maxReplicas is refused at apply time, naming the field, and
    nothing is created."""
    name = "e2e-invalid"
    job = make_job(driver, name)
    job["spec"]["minReplicas"], job["spec"]["maxReplicas"] = 3, 2
    before = {j["metadata"]["name"] for j in await driver.list_jobs()}
    try:
        await driver.apply([job])
    except ApplyRefused as exc:
        assert "minReplicas" in str(exc), f"the error does not name the field: {exc}"
    else:
        raise AssertionError("an invalid ElasticJob was accepted")
    after = {j["metadata"]["name"] for j in await driver.list_jobs()}
    assert after == before and await driver.get_job(name) is None
    assert not await driver.list_pods(name)


MEMBERSHIP = [scale_down, scale_up, scale_down_and_up, autoscaler_shrinks_for_priority,
              worker_evicted, node_lost, worker_killed_mid_epoch, agent_killed, worker_hangs,
              etcd_restarted, operator_killed_during_shrink]
ALL = [job_succeeds_and_cleans_up, *MEMBERSHIP, job_grows_into_new_gpus,
       operator_restarted_mid_run, invalid_job_is_refused]
# Run on the local cluster through KubeDriver (the real kubectl, e2e/test_kube_driver.py)
# instead of LocalDriver: each scenario costs minutes, so the suite runs each one once, and
# these exercise the operator and the path a platform team drives by kubectl at the same time.
THROUGH_KUBECTL = [scale_up, scale_down, worker_killed_mid_epoch, worker_hangs, agent_killed,
                   worker_evicted, node_lost, operator_restarted_mid_run, invalid_job_is_refused]
