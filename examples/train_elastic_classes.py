"""Elastic training example: a small MLP on a synthetic, seeded regression data set.

Run under the launcher (2 processes on this machine)::

    python -m launcher --nproc-per-node=2 examples/train_elastic.py --epochs 3

or alone with ``--standalone``. Every step, rank 0 prints one JSON line to stdout::

    {"event": "step", "step": 12, "epoch": 0, "world_size": 2, "generation": 0,
     "loss": 0.41, "lr": 0.05, "consumed": 192}

plus ``start``, ``stopped`` (after an agreed SIGTERM, checkpoint written) and ``done`` (final
loss on the whole data set) events. ``--log-indices FILE`` makes every rank append the indices
it trained on (see ``launcher.training.audit``) for exactly-once checks. Exits 0 when the
epochs are done, and 0 after a SIGTERM-triggered checkpoint (the agent restarts it); the
session tells the agent which of the two it was (``ELASTIC_OUTCOME_FILE``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from launcher.training import (
    BatchPlan,
    CheckpointDir,
    ElasticContext,
    ElasticLR,
    ElasticSampler,
    ElasticSession,
    IndexLog,
    LauncherEnvError,
)

FEATURES = 16


def make_dataset(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed regression task: y = sin(x . w) + 0.1 * x_0, with a little noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, FEATURES, generator=gen)
    w = torch.randn(FEATURES, generator=gen) / FEATURES**0.5
    y = torch.sin(x @ w) + 0.1 * x[:, 0] + 0.01 * torch.randn(size, generator=gen)
    return x, y.unsqueeze(1)


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dataset-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=16, help="micro batch per worker")
    p.add_argument("--global-batch", type=int, default=None,
                   help="fixedGlobal only; default base world size * batch size")
    p.add_argument("--lr", type=float, default=0.05, help="LR tuned for the base world size")
    p.add_argument("--lr-decay", type=float, default=1.0,
                   help="ExponentialLR gamma per step (shows composition with a scheduler)")
    p.add_argument("--warmup-steps", type=int, default=5, help="LR warm-up after a resize")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None, help="default: $ELASTIC_CHECKPOINT_DIR")
    p.add_argument("--checkpoint-interval", type=int, default=None,
                   help="steps; default: $ELASTIC_CHECKPOINT_INTERVAL or 10")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--log-indices", default=None, help="append per-rank index records here")
    p.add_argument("--step-time", type=float, default=0.0,
                   help="minimum seconds per step, to emulate a bigger model")
    p.add_argument("--state-mb", type=int, default=0,
                   help="carry an extra N MB buffer in the model state (large-state resizes)")
    p.add_argument("--standalone", action="store_true",
                   help="allow running without the launcher as a single process")
    return p.parse_args(argv)


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}, separators=(",", ":")), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    try:
        ctx = ElasticContext.from_env(allow_standalone=args.standalone)
    except LauncherEnvError as exc:
        print(f"error: {exc} (this example: pass --standalone)", file=sys.stderr)
        return 2
    if ctx.world_size > 1:
        dist.init_process_group("gloo", rank=ctx.rank, world_size=ctx.world_size,
                                init_method=f"tcp://{ctx.master_addr}:{ctx.master_port}",
                                timeout=timedelta(seconds=120))
    x, y = make_dataset(args.dataset_size, args.seed)
    net = make_model(args.seed)
    if args.state_mb:
        net.register_buffer("ballast", torch.zeros(args.state_mb << 18))  # 4 bytes each
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)
    plan = BatchPlan.create(ctx.batching, world_size=ctx.world_size, micro_batch=args.batch_size,
                            base_world_size=ctx.base_world_size,
                            global_batch=args.global_batch)
    elastic_lr = ElasticLR(optimizer, policy=ctx.lr_scaling, world_size=ctx.world_size,
                           base_world_size=ctx.base_world_size, batching=ctx.batching,
                           warmup_steps=args.warmup_steps)
    checkpoint_dir = args.checkpoint_dir or ctx.checkpoint_dir
    interval = args.checkpoint_interval or ctx.checkpoint_interval or 10
    session = ElasticSession(
        ctx, model=net, optimizer=optimizer, sampler=ElasticSampler(len(x), seed=args.seed),
        plan=plan, elastic_lr=elastic_lr, scheduler=scheduler,
        checkpoints=CheckpointDir(checkpoint_dir, keep=args.keep) if checkpoint_dir else None,
        checkpoint_interval=interval, seed=args.seed,
        index_log=IndexLog(args.log_indices) if args.log_indices else None)
    resumed = session.resume()
    # A ballast buffer is state, not something the forward pass needs in sync.
    model = DistributedDataParallel(net, broadcast_buffers=not args.state_mb) \
        if ctx.world_size > 1 else net
    if ctx.is_main:
        emit("start", generation=ctx.generation, world_size=ctx.world_size, resumed_step=resumed,
             epoch=session.epoch, consumed=session.sampler.consumed,
             accumulation=plan.accumulation, global_batch=plan.global_batch)

    stopped = False
    while session.epoch < args.epochs:
        started = time.monotonic()
        step = session.next_step()
        micro_batches = step.micro_batches(plan, ctx.rank)
        loss_sum = torch.zeros(())
        for k, mb in enumerate(micro_batches):
            last = k == len(micro_batches) - 1
            sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last \
                else nullcontext()
            with sync:
                idx = torch.tensor(mb.indices, dtype=torch.long)
                per_sample = torch.nn.functional.mse_loss(model(x[idx]), y[idx], reduction="none")
                (per_sample.sum() * mb.loss_weight).backward()
                loss_sum += per_sample.detach().sum()
        lr_used = elastic_lr.current_lrs()[0]
        elastic_lr.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if ctx.world_size > 1:
            dist.all_reduce(loss_sum)
        consumed = step.start + len(step.indices)
        stopped = session.finish_step(step)
        if ctx.is_main:
            emit("step", step=session.global_step, epoch=step.epoch, world_size=ctx.world_size,
                 generation=ctx.generation, loss=loss_sum.item() / len(step.indices),
                 lr=lr_used, consumed=consumed)
        if stopped:
            break
        delay = args.step_time - (time.monotonic() - started)
        if delay > 0:
            time.sleep(delay)

    session.close()
    if ctx.is_main:
        if stopped:
            emit("stopped", step=session.global_step, epoch=session.epoch,
                 consumed=session.sampler.consumed)
        else:
            with torch.no_grad():
                final = torch.nn.functional.mse_loss(net(x), y).item()
            emit("done", step=session.global_step, loss=final)
    if ctx.world_size > 1:
        # Leave together: a rank tearing down its connections while rank 0 (which hosts the
        # store) still writes the checkpoint can make gloo abort the process at exit. DDP's
        # reducer holds the process group: drop it first, so the group's threads are joined
        # here rather than in interpreter teardown (where gloo can std::terminate).
        dist.barrier()
        del model
        gc.collect()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
