"""Checkpoint save/load cost: ours (atomic, fsynced, checksummed) vs plain torch.save/torch.load.

A ~100M-parameter model's state dict (CPU, float32, ~400 MB) is saved and loaded ``--repeat``
times; each repetition measures every variant (saves in rotating order) on the same file system
with the same state,
after ``os.sync()`` so that no variant pays for another's dirty pages; medians are reported.

Variants:
- ``torch.save`` / ``torch.load``: the baseline; the save ends in the page cache (not durable).
- ``torch.save+fsync``: the same made durable, to separate the price of durability from ours.
- ``ours``: ``launcher.training.checkpoint.write_atomic`` (temp file, CRCs, writeback, fsync,
  rename, directory fsync) and ``read_verified`` (trailer and CRC32 of every byte, then
  ``torch.load`` with the verified file memory-mapped).
Because ours returns memory-mapped tensors and ``torch.load`` copies, "load" is measured as what
a restart does with either: load, then ``model.load_state_dict`` (so both end with the data in
the model's own memory). ``torch.load(mmap=True)``, unverified, is printed for reference. Loads
read files just written, so from the page cache for every variant alike.

The last line is ``save_overhead=<ours/torch.save> load_overhead=<ours/torch.load>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from launcher.training.checkpoint import read_verified, write_atomic


def make_model(params: int) -> torch.nn.Module:
    """Ten square float32 layers totalling about ``params`` parameters."""
    side = int((params / 10) ** 0.5)
    return torch.nn.Sequential(*(torch.nn.Linear(side, side) for _ in range(10)))


def timed(action: Callable[[], object]) -> float:
    os.sync()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def torch_save_fsync(state: dict[str, torch.Tensor], path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=100e6)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=".", help="file system to measure (default: cwd)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = make_model(int(args.params))
    state = model.state_dict()
    count = sum(t.numel() for t in state.values())
    print(f"parameters={count / 1e6:.1f}M bytes={count * 4 / 1e6:.0f}MB repeat={args.repeat}")
    times: dict[str, list[float]] = {k: [] for k in (
        "torch.save", "torch.save+fsync", "ours.save", "torch.load", "torch.load(mmap)",
        "ours.load")}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".bench-ckpt-") as tmp:
        plain, durable, ours = Path(tmp, "plain.pt"), Path(tmp, "durable.pt"), Path(tmp, "o.pt")
        for rep in range(args.repeat):
            for path in (plain, durable, ours):
                path.unlink(missing_ok=True)
            saves: list[tuple[str, Callable[[], object]]] = [
                ("torch.save", lambda: torch.save(state, plain)),
                ("torch.save+fsync", lambda: torch_save_fsync(state, durable)),
                ("ours.save", lambda: write_atomic(ours, state))]
            for name, action in saves[rep % 3:] + saves[:rep % 3]:  # rotate: no order bias
                times[name].append(timed(action))
            times["torch.load"].append(timed(lambda: model.load_state_dict(
                torch.load(plain, weights_only=True))))
            times["torch.load(mmap)"].append(timed(lambda: model.load_state_dict(
                torch.load(plain, weights_only=True, mmap=True))))
            times["ours.load"].append(timed(lambda: model.load_state_dict(read_verified(ours))))
            print(f"rep {rep}: " + " ".join(f"{k}={v[-1]:.3f}s" for k, v in times.items()),
                  flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("median: " + " ".join(f"{k}={v:.3f}s" for k, v in med.items()))
    print(f"ours.save/(torch.save+fsync)={med['ours.save'] / med['torch.save+fsync']:.3f} "
          f"ours.load/torch.load(mmap)={med['ours.load'] / med['torch.load(mmap)']:.3f}")
    print(f"save_overhead={med['ours.save'] / med['torch.save']:.3f} "
          f"load_overhead={med['ours.load'] / med['torch.load']:.3f}")


if __name__ == "__main__":
    main()
