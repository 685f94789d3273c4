"""Chaos soak benchmark: one elastic job on the embedded local cluster, K random membership
events (seeded), the e2e checks at the end, goodput and the time lost per event kind.

See :mod:`e2e.chaos` for the events and the definitions. The last line is machine-readable:
``events=K succeeded=1 exactly_once=1 goodput=X``. A failed check prints its reason and
``succeeded=0``, and the command exits 1.

    .venv/bin/python bench/chaos.py --seed 1 --events 10
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from e2e.chaos import MAX_REPLICAS, soak  # noqa: E402
from e2e.local_driver import LocalDriver  # noqa: E402
from elastic_operator.local.cluster import ClusterConfig, LocalCluster  # noqa: E402

# The operator flags the e2e scenarios use: short backoffs and resync, so recovery is timed
# by the system and not by a retry waiting out a long cap.
OPERATOR_ARGS = ["--backoff-base", "0.3", "--backoff-cap", "2", "--resync", "2"]


async def run(seed: int, events: int, gap: int, state_dir: Path) -> int:
    config = ClusterConfig(state_dir=state_dir, nodes=MAX_REPLICAS, gpus_per_node=1,
                           workdir=REPO, operator_args=OPERATOR_ARGS)
    async with LocalCluster(config) as cluster:
        try:
            result = await soak(LocalDriver(cluster), seed, events, gap)
        except AssertionError as exc:
            print(f"check failed: {exc}")
            print(f"events={events} succeeded=0 exactly_once=0 goodput=0")
            return 1
    print(result.summary())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--gap", type=int, default=200,
                        help="training between two events, in steps at world size 2 (default "
                             "200, about 20 s: a hostile cluster)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="the cluster's files (default: a temporary directory)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        return asyncio.run(run(args.seed, args.events, args.gap,
                               args.state_dir or Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
