"""Fast tests of the in-place pieces: the agent channel, the peer-state transport and its
authentication, the communicator (gloo abort and regroup; the NCCL path's calls), the audit."""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

from launcher import inplace
from launcher.training import audit, communicator, peer_state


def test_assignment_and_status_round_trip(tmp_path: Path) -> None:
    a = inplace.Assignment(4, 1, 3, "10.0.0.1", 29500, 2)
    inplace.write_assignment(tmp_path / "a", a)
    assert inplace.read_assignment(tmp_path / "a") == a
    assert inplace.read_assignment(tmp_path / "missing") is None
    (tmp_path / "bad").write_text("{")
    assert inplace.read_assignment(tmp_path / "bad") is None
    inplace.write_status(str(tmp_path / "s"), inplace.WorkerStatus(True, 4, 3))
    assert inplace.read_status(tmp_path / "s") == inplace.WorkerStatus(True, 4, 3)
    assert list(tmp_path.glob(".*tmp")) == []  # atomic writes leave no temporaries


def test_secret_file_is_private_and_bound_to_the_job(tmp_path: Path) -> None:
    one = inplace.derive_secret(b"password", "job-a")
    assert one != inplace.derive_secret(b"password", "job-b")
    inplace.write_secret(tmp_path / "k", one)
    assert (tmp_path / "k").stat().st_mode & 0o077 == 0
    assert inplace.read_secret(tmp_path / "k") == one


def test_peer_state_is_served_to_the_secret_holder_bit_identical() -> None:
    key = secrets.token_bytes(32)
    state = {"w": torch.randn(300, 7), "step": 12, "nested": {1: torch.arange(5)},
             "mixed": [torch.ones(3, dtype=torch.bfloat16), (0.5, None), torch.empty(0)],
             "strided": torch.randn(6, 4).t()}
    server = peer_state.StateServer("127.0.0.1", key, 7, peer_state.Payload(state))
    try:
        back = peer_state.fetch(server.address, key, 7)
    finally:
        server.close()
    assert torch.equal(back["w"], state["w"]) and back["step"] == 12
    assert torch.equal(back["nested"][1], state["nested"][1])
    assert torch.equal(back["mixed"][0], state["mixed"][0]) and back["mixed"][1] == (0.5, None)
    assert back["mixed"][0].dtype == torch.bfloat16 and back["mixed"][2].numel() == 0
    assert torch.equal(back["strided"], state["strided"])


@pytest.mark.parametrize("who", ["wrong secret", "other generation", "no secret"])
def test_peer_state_refuses_a_process_without_the_secret(who: str) -> None:
    key = secrets.token_bytes(32)
    server = peer_state.StateServer("127.0.0.1", key, 7, peer_state.Payload({"w": torch.ones(2)}))
    try:
        if who == "no secret":
            # Network access only: connect, read the nonce, answer anything.
            host, port = server.address.split(":")
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.recv(32)
                sock.sendall(b"\0" * 32)
                assert sock.recv(2) == b"NO"
                assert sock.recv(16) == b""  # closed, nothing served
        else:
            wrong = secrets.token_bytes(32) if who == "wrong secret" else key
            generation = 7 if who == "wrong secret" else 8
            with pytest.raises(peer_state.PeerStateRefused, match="secret"):
                peer_state.fetch(server.address, wrong, generation)
        assert server.refused == 1
    finally:
        server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _member(rank: int, ports: tuple[int, int], results: mp.Queue) -> None:  # type: ignore[type-arg]
    torch.set_num_threads(1)
    comm = communicator.Communicator("gloo", timeout=30)
    comm.init(rank, 3, "127.0.0.1", ports[0])
    for i in range(1000):
        if rank == 0 and i == 20:
            os.kill(os.getpid(), signal.SIGKILL)  # the store host dies mid-run
        try:
            comm.all_reduce(torch.ones(64), lambda: False)
        except communicator.CollectiveAborted:
            failed_at = time.monotonic()
            comm.abort()
            break
    else:
        results.put((rank, "never failed"))
        return
    comm.init(rank - 1, 2, "127.0.0.1", ports[1])  # survivors regroup on a new store
    box = torch.ones(1)
    comm.all_reduce(box, lambda: False)
    results.put((rank, float(box.item()), time.monotonic() - failed_at))
    comm.destroy()


@pytest.mark.slow
def test_gloo_survivors_abort_fast_and_regroup_after_the_store_host_dies() -> None:
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    ports = (_free_port(), _free_port())
    procs = [ctx.Process(target=_member, args=(r, ports, results)) for r in range(3)]
    for p in procs:
        p.start()
    try:
        got = sorted(results.get(timeout=120) for _ in range(2))
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [g[:2] for g in got] == [(1, 2.0), (2, 2.0)], got
    assert all(g[2] < 10.0 for g in got), got  # no collective timeout was waited for


def test_a_collective_the_caller_declares_dead_is_abandoned() -> None:
    """The NCCL path's mechanism, on any backend: a collective that does not complete is
    given up when ``is_dead`` says so, without waiting for the timeout."""

    class Stuck:
        def is_completed(self) -> bool:
            return False

        def wait(self) -> None:
            raise AssertionError("not to be waited for")

    comm = communicator.Communicator("gloo", timeout=600)
    started = time.monotonic()
    with pytest.raises(communicator.CollectiveAborted, match="abandoned"):
        comm.wait(Stuck(), lambda: time.monotonic() - started > 0.05)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("rank", [0, 1])
def test_a_formation_the_rendezvous_abandoned_is_given_up_at_once(rank: int) -> None:
    """A round whose members never all arrive (one died, or a newer round superseded it): the
    store host waiting for arrivals and a rank waiting for a store that never opens both give
    up when ``abandoned()`` turns True, not after the timeout, and the process can form the
    next round's group at once."""
    comm = communicator.Communicator("gloo", timeout=600)
    started = time.monotonic()
    with pytest.raises(communicator.CollectiveAborted, match="abandoned"):
        comm.init(rank, 3, "127.0.0.1", _free_port(), lambda: time.monotonic() - started > 0.2)
    assert 0.2 <= time.monotonic() - started < 10
    comm.abort()
    assert comm.store is None
    comm.init(0, 1, "127.0.0.1", _free_port())  # the next round: alone, forms at once
    box = torch.ones(2)
    comm.all_reduce(box, lambda: False)
    assert box.tolist() == [1.0, 1.0]
    comm.destroy()


def test_nccl_path_aborts_communicators_and_is_refused_where_it_cannot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    comm = communicator.Communicator("nccl", local_rank=1)
    assert comm.device == torch.device("cuda", 1)
    if not torch.distributed.is_nccl_available():
        # A CPU build cannot abort NCCL communicators: the session must not claim in-place.
        assert comm.can_abort is False
    calls: list[str] = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(communicator.c10d, "_abort_process_group",
                        lambda *a: calls.append("abort"))
    monkeypatch.setattr(torch.distributed, "destroy_process_group",
                        lambda *a: calls.append("destroy"))
    comm.abort()
    assert calls == ["abort"]  # nccl: abort the communicators, never a blocking destroy
    communicator.Communicator("gloo").abort()
    assert calls == ["abort", "destroy"]
    with pytest.raises(ValueError, match="gloo and nccl"):
        communicator.Communicator("mpi")


def _step(gen: int, step: int, rank: int, indices: list[int]) -> dict[str, object]:
    return {"event": "step", "generation": gen, "step": step, "epoch": 0, "rank": rank,
            "indices": indices}


def test_audit_counts_a_redone_step_once() -> None:
    records = [
        {"event": "restore", "generation": 1, "step": 0, "rank": r} for r in range(3)
    ] + [_step(1, 1, r, [r]) for r in range(3)] + [
        {"event": "discard", "generation": 1, "step": 2, "rank": 0},
        {"event": "discard", "generation": 1, "step": 2, "rank": 1},
    ] + [{"event": "restore", "generation": 2, "step": 1, "rank": r} for r in range(2)] + [
        _step(2, 2, 0, [3, 4]), _step(2, 2, 1, [5])]
    assert audit.check_exactly_once(records, dataset_size=6, epochs=1).ok
    assert audit.redone_steps(records) == [(1, 2)]
    assert audit.committed_world_sizes(records) == [3, 2]


def test_audit_keeps_a_healed_step_with_every_share() -> None:
    """Rank 1 committed step 2, rank 0 did not, the dead rank 2 never logged: the source
    re-logs every old rank's share; rank 1's own record counts once."""
    records = [_step(1, 1, r, [r]) for r in range(3)] + [
        _step(1, 2, 1, [4]),
        {"event": "discard", "generation": 1, "step": 2, "rank": 0},
        _step(1, 2, 0, [3]), _step(1, 2, 1, [4]), _step(1, 2, 2, [5]),  # healed: re-logged
        {"event": "restore", "generation": 2, "step": 2, "rank": 0},
        {"event": "restore", "generation": 2, "step": 2, "rank": 1},
    ]
    assert audit.check_exactly_once(records, dataset_size=6, epochs=1).ok
    assert audit.redone_steps(records) == []


def test_the_elastic_example_is_a_small_diff_of_the_plain_one() -> None:
    import difflib

    examples = Path(__file__).resolve().parents[2] / "examples"
    plain = (examples / "train_ddp.py").read_text().splitlines()
    elastic = (examples / "train_elastic.py").read_text().splitlines()
    changed = [line for line in difflib.unified_diff(plain, elastic, lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert len(changed) < 15, changed
    # launcher/training/README.md shows this very diff.
    readme = (examples.parent / "launcher" / "training" / "README.md").read_text()
    block = readme.split("```diff\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line for line in block if line[:1] in "+-"] == changed


@pytest.mark.slow
def test_the_elastic_example_runs_alone_without_the_launcher(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "train_elastic.py"), "--epochs", "1",
         "--dataset-size", "64"], env={**env, "PYTHONPATH": str(root)}, capture_output=True,
        text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"event":"done","step":4' in done.stdout
