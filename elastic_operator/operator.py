"""``elastic-operator run``: the ElasticJob operator (kopf) against a cluster.

Credentials: ``--kubeconfig`` (or ``$KUBECONFIG``, ``~/.kube/config``), or the in-cluster
service account when running in a pod. Scope: every namespace, or the ``--namespace`` ones.
Peering is standalone: run one replica (the Deployment in ``deploy/`` does), so no peering
CRD and no leader election are needed; a second replica would double the work but not break
it (every write is idempotent).

The handlers live in the modules of :data:`HANDLER_MODULES`; they find the runtime in kopf's
``memo``: ``memo.config`` (:class:`OperatorConfig`), and, after startup, ``memo.api`` (an
async REST client logged in like kopf), ``memo.metrics`` and ``memo.reconciler``.

Managed rendezvous: a job without ``spec.rendezvous.endpoints`` gets
``--default-rendezvous-endpoints`` (default: the three ``elastic-etcd`` members that ``deploy/``
installs next to the operator). One etcd serves every job; each job's keys live under its own
prefix (rdzv id ``<namespace>-<name>-<uid[:8]>``). Why one per cluster rather than one per job
or namespace: no per-job startup latency (an etcd pod takes seconds to schedule and start,
added to every job's first formation), nothing per job to run, and one small etcd easily
carries the rendezvous traffic of hundreds of jobs. The shared failure domain has three
members; the keys are kept apart by etcd's users (``--etcd-root-password-file``: a user per job
reaching only its prefix, see :mod:`elastic_operator.job.etcd_credentials`) and the traffic by TLS
(``--etcd-ca-file``); docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import kopf

from elastic_operator import k8s
from elastic_operator.job.planner import PlannerSettings
from elastic_operator.job.reconciler import ReconcilerSettings
from elastic_operator.job.worker_manifests import DEFAULT_RENDEZVOUS_ENDPOINTS
from launcher.etcd_client import EtcdSecurity

# Each module registers its kopf handlers on import. The autoscaler and the reclaim
# controller add their own module here (one line each).
HANDLER_MODULES: list[str] = [
    "elastic_operator.job.handlers",
    "elastic_operator.autoscaler.handlers",
    "elastic_operator.reclaim.handlers",
]


@dataclass(frozen=True)
class OperatorConfig:
    """Everything ``run`` was told, as one typed object (``memo.config`` in handlers)."""

    kubeconfig: Path | None = None
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 0
    liveness_endpoint: str | None = None
    reconciler: ReconcilerSettings = field(default_factory=ReconcilerSettings)


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``elastic-operator run``."""
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster "
                        "service account, else $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                        help="watch only this namespace (repeatable; default: all namespaces)")
    parser.add_argument("--metrics-port", type=int, default=8000,
                        help="serve Prometheus /metrics on this port (0: off; default 8000)")
    parser.add_argument("--liveness", metavar="URL", default=None,
                        help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--default-rendezvous-endpoints", default=DEFAULT_RENDEZVOUS_ENDPOINTS,
                        help="etcd endpoints for jobs without spec.rendezvous.endpoints "
                        f"(default {DEFAULT_RENDEZVOUS_ENDPOINTS})")
    parser.add_argument("--etcd-ca-file", metavar="PEM", default=None,
                        help="CA of the rendezvous etcd's serving certificate: TLS for the "
                        "operator and, copied into each job's Secret, for its workers")
    parser.add_argument("--etcd-cert-file", metavar="PEM", default=None,
                        help="client certificate for etcd TLS (with --etcd-key-file)")
    parser.add_argument("--etcd-key-file", metavar="PEM", default=None,
                        help="key of --etcd-cert-file")
    parser.add_argument("--etcd-root-password-file", metavar="FILE", default=None,
                        help="password of etcd's root user on the default etcd: switches on "
                        "per-job etcd users (and auth itself on a fresh etcd); without it "
                        "jobs share an unauthenticated etcd (local cluster, tests)")
    parser.add_argument("--no-read-rounds", action="store_true",
                        help="do not read the formed round from etcd (status.worldSize is then "
                        "ready pods x nprocPerNode)")
    parser.add_argument("--backoff-base", type=float, default=1.0, metavar="SECONDS",
                        help="first delay before a failed worker is recreated (default 1)")
    parser.add_argument("--backoff-cap", type=float, default=60.0, metavar="SECONDS",
                        help="longest delay before a failed worker is recreated (default 60)")
    parser.add_argument("--resync", type=float, default=10.0, metavar="SECONDS",
                        help="reconcile every running job at least this often (default 10)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    """The typed configuration of parsed ``run`` arguments (raises ValueError when invalid)."""
    for flag, value in (("--backoff-base", args.backoff_base), ("--backoff-cap", args.backoff_cap),
                        ("--resync", args.resync)):
        if value <= 0:
            raise ValueError(f"{flag} must be > 0, got {value}")
    if args.backoff_cap < args.backoff_base:
        raise ValueError(f"--backoff-cap {args.backoff_cap} is below --backoff-base "
                         f"{args.backoff_base}; raise the cap")
    security = EtcdSecurity(args.etcd_ca_file, args.etcd_cert_file, args.etcd_key_file,
                            hint="the operator's --etcd-* flags")
    root_password = None
    if args.etcd_root_password_file:
        try:
            root_password = Path(args.etcd_root_password_file).read_text().strip("\r\n")
        except OSError as exc:
            raise ValueError(f"--etcd-root-password-file={args.etcd_root_password_file}: "
                             f"{exc.strerror}; mount Secret elastic-etcd-root there") from exc
        if not root_password:
            raise ValueError(f"--etcd-root-password-file={args.etcd_root_password_file} is "
                             "empty; put the root password in Secret elastic-etcd-root")
    return OperatorConfig(
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.namespace),
        metrics_port=args.metrics_port,
        liveness_endpoint=args.liveness,
        reconciler=ReconcilerSettings(
            planner=PlannerSettings(args.backoff_base, args.backoff_cap),
            default_rendezvous_endpoints=args.default_rendezvous_endpoints,
            resync_seconds=args.resync,
            read_rounds=not args.no_read_rounds,
            etcd_security=security,
            etcd_root_password=root_password,
            namespaces=tuple(args.namespace),
        ),
    )


def kopf_settings(verbose: bool = False) -> kopf.OperatorSettings:
    """kopf's settings for this operator (typed, not globals)."""
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    settings.posting.enabled = False  # we record our own, meaningful events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    # No cap on kopf's per-object workers: each stays alive idle_timeout after its last event,
    # so a cap of 256 admitted ~50 objects a second and, with thousands of pods arriving at
    # once, left the worker-pod index minutes behind the watch (bench/operator_scale.py).
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = 2.0
    settings.execution.max_workers = 4
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return settings


def register_handlers() -> None:
    """Import every module of :data:`HANDLER_MODULES` (registering its handlers)."""
    for module in HANDLER_MODULES:
        importlib.import_module(module)


@kopf.on.login()
def _login(**_: object) -> kopf.ConnectionInfo:
    kubeconfig = os.environ.get("KUBECONFIG")
    return k8s.login(Path(kubeconfig) if kubeconfig else None)


def execute(args: argparse.Namespace) -> int:
    """Run the operator until SIGINT/SIGTERM; returns the exit status."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        logging.error("%s", exc)
        return 2
    if config.kubeconfig is not None:
        if not config.kubeconfig.is_file():
            logging.error("--kubeconfig %s: no such file", config.kubeconfig)
            return 2
        os.environ["KUBECONFIG"] = str(config.kubeconfig)
    try:  # fail fast and clearly; kopf would retry a failing login for ever
        k8s.login(config.kubeconfig)
    except kopf.LoginError as exc:
        logging.error("%s", exc)
        return 2
    rdzv = config.reconciler
    logging.info("rendezvous etcd %s: %s; %s", rdzv.default_rendezvous_endpoints,
                 rdzv.etcd_security.describe(),
                 "a user per job" if rdzv.etcd_root_password is not None else
                 "no per-job users: every job can read and write every other job's keys "
                 "(set --etcd-root-password-file outside a local cluster)")
    register_handlers()
    memo = kopf.Memo(config=config)
    asyncio.run(
        kopf.operator(
            settings=kopf_settings(args.verbose),
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            liveness_endpoint=config.liveness_endpoint,
            memo=memo,
        )
    )
    return 0
