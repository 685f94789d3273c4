"""The end-to-end scenarios, written once against :class:`e2e.driver.Driver`.

Each returns nothing and raises AssertionError with what went wrong. Jobs are small (a few
hundred samples, paced by ``--step-time``) so that a scenario takes well under a minute on
the local cluster, yet long enough that faults land mid-epoch.
"""

from __future__ import annotations

import json
from typing import Any

from e2e.driver import ApplyRefused, Driver, Obj, job_manifest, wait_until
from elastic_operator.labels import REPLICA_INDEX
from launcher.training.audit import check_exactly_once

DATASET = 384
BATCH = 16
EPOCHS = 2


def train_args(driver: Driver, job: str, *, step_time: float = 0.15,
               epochs: int = EPOCHS) -> list[str]:
    return [f"--epochs={epochs}", f"--dataset-size={DATASET}", f"--batch-size={BATCH}",
            f"--step-time={step_time}",
            f"--log-indices={driver.shared_dir(job)}/indices.jsonl"]


def make_job(driver: Driver, name: str, **kw: Any) -> Obj:
    step_time = kw.pop("step_time", 0.15)
    epochs = kw.pop("epochs", EPOCHS)
    kw.setdefault("replicas", 2)
    kw.setdefault("min_replicas", 1)
    kw.setdefault("max_replicas", 2)
    job = job_manifest(name, train_args=train_args(driver, name, step_time=step_time,
                                                   epochs=epochs),
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


async def assert_exactly_once(driver: Driver, name: str, epochs: int = EPOCHS) -> None:
    path = f"{driver.shared_dir(name)}/indices.jsonl"
    records = [json.loads(line) for line in (await driver.read_file(path)).splitlines()
               if line.startswith("{")]
    report = check_exactly_once([r for r in records if r.get("event") in ("restore", "step")],
                                dataset_size=DATASET, epochs=epochs)
    assert report.ok, f"job {name}: samples not consumed exactly once: {report.problems}"


async def job_succeeds_and_cleans_up(driver: Driver) -> None:
    """A job runs to Succeeded; its worker pods are deleted afterwards."""
    name = "e2e-basic"
    await driver.apply([make_job(driver, name, step_time=0.02)])
    await wait_phase(driver, name, "Succeeded")

    async def no_pods() -> bool:
        return not await driver.list_pods(name)
    await wait_until(no_pods, f"the pods of {name} to be cleaned up", 120)
    await assert_exactly_once(driver, name)


async def worker_killed_mid_epoch(driver: Driver) -> None:
    """SIGKILL the training process of one worker in the middle of epoch 0: the job recovers,
    succeeds, and every sample of every epoch is consumed exactly once."""
    name = "e2e-kill"
    await driver.apply([make_job(driver, name)])
    per_epoch = DATASET // (BATCH * 2)

    async def mid_epoch() -> dict[str, Any] | None:
        event = await latest_step(driver, name)
        return event if event and event["step"] >= per_epoch // 2 else None
    event = await wait_until(mid_epoch, f"{name} to reach the middle of epoch 0")
    assert event["epoch"] == 0, f"too late for a mid-epoch fault: {event}"
    pods = [p for p in await driver.list_pods(name)
            if (p.get("status") or {}).get("phase") == "Running"]
    victim = max(pods, key=lambda p: int(p["metadata"]["labels"][REPLICA_INDEX]))
    assert await driver.kill_training_processes(victim["metadata"]["name"]) >= 1
    await wait_phase(driver, name, "Succeeded")
    await assert_exactly_once(driver, name)


async def job_grows_into_new_gpus(driver: Driver) -> None:
    """Free GPUs appear (or, on a real cluster, the job is scaled): the job grows to use them,
    keeps training and succeeds."""
    name = "e2e-grow"
    await driver.apply([make_job(driver, name, replicas=1, max_replicas=3, autoscale=True,
                                 step_time=0.3, epochs=3)])

    async def training() -> dict[str, Any] | None:
        return await latest_step(driver, name)
    await wait_until(training, f"{name} to start training")
    if driver.can_add_gpus:
        await driver.add_gpus(2)
    else:
        await driver.scale(name, 3)

    async def grown() -> bool:
        event = await latest_step(driver, name)
        return bool(event and event["world_size"] == 3)
    await wait_until(grown, f"{name} to train with world size 3", 180)
    job = await driver.get_job(name)
    assert job is not None and job["spec"]["replicas"] == 3, job
    await wait_phase(driver, name, "Succeeded")
    await assert_exactly_once(driver, name, epochs=3)


async def operator_restarted_mid_run(driver: Driver) -> None:
    """The operator is SIGKILLed and restarted while a job trains: the job still succeeds and
    never has two pods for one replica index."""
    name = "e2e-operator"
    await driver.apply([make_job(driver, name, step_time=0.2)])

    async def training() -> dict[str, Any] | None:
        return await latest_step(driver, name)
    await wait_until(training, f"{name} to start training")
    await driver.restart_operator()
    seen: list[str] = []

    async def done_without_duplicates() -> bool:
        pods = [p for p in await driver.list_pods(name)
                if not p["metadata"].get("deletionTimestamp")]
        indices = [p["metadata"]["labels"][REPLICA_INDEX] for p in pods]
        if len(indices) != len(set(indices)):
            seen.append(f"duplicate pods per replica index: {sorted(indices)}")
        names = [p["metadata"]["name"] for p in pods]
        assert len(pods) <= 2, f"more pods than maxReplicas: {names}"
        return await phase(driver, name) == "Succeeded"
    await wait_until(done_without_duplicates, f"{name} to succeed after the operator restart",
                     240, interval=0.2)
    assert not seen, seen
    await assert_exactly_once(driver, name)


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


ALL = [job_succeeds_and_cleans_up, worker_killed_mid_epoch, job_grows_into_new_gpus,
       operator_restarted_mid_run, invalid_job_is_refused]
