"""A short-API (``launcher.training.init``) training script for the in-place resize tests.

The loop of ``examples/train_elastic.py``, plus what the tests observe: after every
formation, each rank appends ``{"generation", "world_size", "rank", "step", "pid", "hash",
"factor"}`` to ``--out/states.jsonl`` (``hash``: SHA-256 over every tensor and number of the
session's state: model, optimizer, scheduler, ElasticLR, sampler; a test can check that all
ranks of a generation hold bit-identical state and that survivors kept their processes.
``parts``: the same per key, for the failure message).
``--state-mb N`` adds an N MB buffer to the model (the large-state join measurement).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from launcher import training as elastic


def digest(value: Any, h: Any) -> None:
    """Feed every tensor's bytes and every other value's repr into ``h``, in a fixed order."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()))
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(str(key).encode())
            digest(value[key], h)
    elif isinstance(value, (list, tuple)):
        for item in value:
            digest(item, h)
    else:
        h.update(repr(value).encode())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--dataset-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--step-time", type=float, default=0.05)
    p.add_argument("--state-mb", type=int, default=0)
    p.add_argument("--no-states", action="store_true", help="skip the hashes (timing runs)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    session = elastic.init()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.dataset_size, 8, generator=gen)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True).sin())
    sampler = session.sampler(data, batch_size=args.batch_size, seed=0)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    if args.state_mb:
        net.register_buffer("ballast", torch.zeros(args.state_mb << 18))  # float32: 4 B each
    model = session.ddp(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.999)
    optimizer = session.wrap(optimizer, scheduler)
    seen = -1
    for epoch in session.epochs(args.epochs):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            if session.assignment.generation != seen and not args.no_states:
                seen = session.assignment.generation
                state = session.state()
                parts = {}
                for key in sorted(state):
                    part = hashlib.sha256()
                    digest(state[key], part)
                    parts[key] = part.hexdigest()[:12]
                h = hashlib.sha256()
                digest(state, h)
                with open(out / "states.jsonl", "a") as f:
                    f.write(json.dumps({
                        "generation": seen, "world_size": dist.get_world_size(),
                        "rank": dist.get_rank(), "step": session.step, "pid": os.getpid(),
                        "hash": h.hexdigest(), "parts": parts,
                        "factor": session.elastic_lr.factor}) + "\n")
            started = time.monotonic()
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()  # does not advance after a discarded step
            time.sleep(max(0.0, args.step_time - (time.monotonic() - started)))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
