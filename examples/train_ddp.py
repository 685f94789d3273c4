"""DDP training of a small MLP on a synthetic, seeded regression data set, in two files that
differ by the diff in ``launcher/training/README.md``: ``train_ddp.py`` is plain DDP for
``torchrun``, the baseline of ``bench/rescale.py``; ``train_elastic.py``, the README's main job,
is the same script on ``launcher.training.init``, which resizes in place under the launcher
(and still runs as a single process)::

    torchrun --standalone --nproc-per-node=2 examples/train_ddp.py --epochs 2
    python -m launcher --nnodes=1:4 ... examples/train_elastic.py --epochs 2

Rank 0 prints one JSON line per step, ``{"event": "step", "step": 12, "epoch": 0,
"world_size": 2, "loss": 0.41, "lr": 0.05}``, and ``done`` at the end. ``--state-mb`` adds a
buffer of that size to the model, to measure resizes of a large state.
(``train_elastic_classes.py`` is the same task on the explicit classes, for ``fixedGlobal``.)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

FEATURES = 16


def make_dataset(size: int, seed: int) -> TensorDataset:
    """A fixed regression task: y = sin(x . w) + 0.1 * x_0, with a little noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, FEATURES, generator=gen)
    w = torch.randn(FEATURES, generator=gen) / FEATURES**0.5
    y = torch.sin(x @ w) + 0.1 * x[:, 0] + 0.01 * torch.randn(size, generator=gen)
    return TensorDataset(x, y.unsqueeze(1))


def make_model(seed: int, state_mb: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 1))
    if state_mb:  # a buffer, never trained: only the state to save or transfer grows
        net.register_buffer("ballast", torch.zeros(state_mb << 18))  # float32: 4 B each
    return net


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dataset-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=16, help="batch per worker")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lr-decay", type=float, default=1.0, help="ExponentialLR gamma per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-time", type=float, default=0.0,
                   help="minimum seconds per step, to emulate a bigger model")
    p.add_argument("--state-mb", type=int, default=0, help="extra MB of model state")
    return p.parse_args(argv)


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}, separators=(",", ":")), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    data = make_dataset(args.dataset_size, args.seed)
    sampler = DistributedSampler(data, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    model = DistributedDataParallel(make_model(args.seed, args.state_mb))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            started = time.monotonic()
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            if dist.get_rank() == 0:
                # The scheduler's count is the committed steps: it is checkpointed (and, in
                # the elastic twin, handed to joiners and not advanced by a discarded step).
                emit("step", step=scheduler.last_epoch, epoch=epoch,
                     world_size=dist.get_world_size(), loss=loss.item(), lr=lr)
            time.sleep(max(0.0, args.step_time - (time.monotonic() - started)))
    if dist.get_rank() == 0:
        emit("done", step=scheduler.last_epoch)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
