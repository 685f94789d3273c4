"""``examples/train_ddp.py``'s task under torchft: the other system of ``bench/rescale.py``.

The same data set, model, optimizer and LR schedule (imported from the example), one process per
replica group (group world size 1, so each process is its own group's rank 0 and hosts its
group's TCPStore and manager server), gloo through torchft's reconfigurable process group,
torchft's DDP and optimizer wrappers, and its sampler (which shards over the maximum number of
replica groups, ``--replica-groups``, and is lossy on a rejoin, as torchft documents). The
Lighthouse is not started here: the benchmark starts it and passes its address in
``TORCHFT_LIGHTHOUSE``. Every replica prints one JSON line per step, the same fields as the
examples (``step`` is torchft's committed step count, ``world_size`` the quorum's number of
participants), so the benchmark reads every member the same way.

SIGTERM (a pod deletion) ends the current step, shuts the manager down and exits 0: the most
graceful leave torchft offers a replica group.

    TORCHFT_LIGHTHOUSE=http://127.0.0.1:29510 python bench/torchft_train.py --replica-id 0
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.distributed import TCPStore
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples import train_ddp
from examples.train_ddp import make_dataset, make_model

try:
    from torchft import DistributedDataParallel, DistributedSampler, Manager, ProcessGroupGloo
    from torchft.optim import OptimizerWrapper
except ImportError:
    print("bench/torchft_train.py needs torchft: pip install -e '.[bench]'", file=sys.stderr)
    raise SystemExit(2) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """torchft's own two options; the rest are ``examples/train_ddp.py``'s, parsed by it."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replica-id", type=int, required=True,
                   help="this replica group's index (its data shard)")
    p.add_argument("--replica-groups", type=int, default=3,
                   help="the most replica groups the job will have (torchft shards over it)")
    own, rest = p.parse_known_args(argv)
    if not 0 <= own.replica_id < own.replica_groups:
        p.error(f"--replica-id {own.replica_id} must be in [0, --replica-groups "
                f"{own.replica_groups}); raise --replica-groups")
    return argparse.Namespace(**vars(train_ddp.parse_args(rest)), **vars(own))


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}, separators=(",", ":")), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    leaving = False

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        nonlocal leaving
        leaving = True

    signal.signal(signal.SIGTERM, on_sigterm)
    # The group's own store: with one process per group, this process is its master.
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    net = make_model(args.seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)

    def state_dict() -> dict[str, Any]:
        return {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}

    def load_state_dict(state: dict[str, Any]) -> None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])

    manager = Manager(pg=ProcessGroupGloo(timeout=timedelta(seconds=10)),
                      load_state_dict=load_state_dict, state_dict=state_dict,
                      min_replica_size=1, replica_id=f"bench_{args.replica_id}",
                      store_addr="127.0.0.1", store_port=store.port, rank=0, world_size=1)
    model = DistributedDataParallel(manager, net)
    wrapped = OptimizerWrapper(manager, optimizer)
    data = make_dataset(args.dataset_size, args.seed)
    sampler = DistributedSampler(data, replica_rank=args.replica_id,
                                 num_replica_groups=args.replica_groups, group_rank=0,
                                 num_replicas=1, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            started = time.monotonic()
            wrapped.zero_grad(set_to_none=True)  # starts the quorum for this step
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            lr = optimizer.param_groups[0]["lr"]
            wrapped.step()  # applied only when the quorum commits
            scheduler.step()
            emit("step", step=manager.current_step(), epoch=epoch,
                 world_size=manager.num_participants(), loss=loss.item(), lr=lr,
                 replica=args.replica_id)
            if leaving:
                manager.shutdown(wait=False)
                return 0
            time.sleep(max(0.0, args.step_time - (time.monotonic() - started)))
    emit("done", step=manager.current_step())
    manager.shutdown(wait=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
