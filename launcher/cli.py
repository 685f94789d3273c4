"""``python -m launcher``: torchrun-compatible flags, each defaulting from the pod's ELASTIC_* env.

A worker pod's command can therefore be just ``python -m launcher train.py``: the operator sets
``contract.PodEnv`` variables; an explicit flag wins over the environment. Both torchrun
spellings are accepted (``--nproc-per-node`` and ``--nproc_per_node``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence

from launcher import contract
from launcher.agent import AgentConfig
from launcher.contract import PodEnv
from launcher.etcd_client import EtcdSecurity, security_from_files
from launcher.etcd_rendezvous import (
    BACKEND_NAME,
    DEFAULT_JOIN_TIMEOUT,
    DEFAULT_LEASE_TTL,
    DEFAULT_REFORM_TIMEOUT,
    DEFAULT_SETTLE,
)


class ConfigError(ValueError):
    """A flag or ELASTIC_* variable has an unusable value; the message names it and the fix."""


def parse_nnodes(value: str) -> tuple[int, int]:
    """``"N"`` or ``"MIN:MAX"`` -> (min, max), validated."""
    try:
        lo, _, hi = value.partition(":")
        low = int(lo)
        high = int(hi) if hi else low
    except ValueError as exc:
        raise ConfigError(f"--nnodes={value!r}: expected N or MIN:MAX, e.g. 2:4") from exc
    if not 1 <= low <= high:
        raise ConfigError(f"--nnodes={value!r}: need 1 <= MIN <= MAX")
    return low, high


def parse_rdzv_conf(value: str) -> dict[str, str]:
    """``"k=v,k2=v2"`` (torchrun's --rdzv-conf) -> dict."""
    conf: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError(f"--rdzv-conf item {item!r}: expected KEY=VALUE")
        conf[key.strip()] = val.strip()
    return conf


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def default(name: str, fallback: str | None) -> str | None:
        return env.get(name) or fallback

    nnodes_default = None
    if env.get(PodEnv.MIN_NODES) or env.get(PodEnv.MAX_NODES):
        low = env.get(PodEnv.MIN_NODES) or env.get(PodEnv.MAX_NODES)
        nnodes_default = f"{low}:{env.get(PodEnv.MAX_NODES) or low}"
    p = argparse.ArgumentParser(
        prog="python -m launcher",
        description="Elastic launcher (local agent) with an etcd v3 rendezvous.",
    )
    p.add_argument("--nnodes", default=nnodes_default or "1:1",
                   help=f"N or MIN:MAX (env {PodEnv.MIN_NODES}/{PodEnv.MAX_NODES})")
    p.add_argument("--nproc-per-node", "--nproc_per_node", dest="nproc_per_node", type=int,
                   default=int(default(PodEnv.NPROC_PER_NODE, "1") or 1),
                   help=f"training processes per node (env {PodEnv.NPROC_PER_NODE})")
    p.add_argument("--rdzv-backend", "--rdzv_backend", dest="rdzv_backend", default=BACKEND_NAME,
                   help=f"only {BACKEND_NAME!r} (accepted for torchrun compatibility)")
    p.add_argument("--rdzv-endpoint", "--rdzv_endpoint", dest="rdzv_endpoint",
                   default=default(PodEnv.RDZV_ENDPOINT, None),
                   help=f"etcd HOST:PORT[,HOST:PORT] (env {PodEnv.RDZV_ENDPOINT})")
    p.add_argument("--rdzv-id", "--rdzv_id", dest="rdzv_id", default=default(PodEnv.RDZV_ID, None),
                   help=f"unique job id (env {PodEnv.RDZV_ID})")
    for flag, var, what in (
        ("--rdzv-ca-file", PodEnv.RDZV_CA_FILE, "CA certificate (PEM) that signed etcd's"),
        ("--rdzv-cert-file", PodEnv.RDZV_CERT_FILE, "client certificate (PEM) for etcd TLS"),
        ("--rdzv-key-file", PodEnv.RDZV_KEY_FILE, "key (PEM) of --rdzv-cert-file"),
        ("--rdzv-user", PodEnv.RDZV_USER, "etcd v3 user of this job"),
        ("--rdzv-password-file", PodEnv.RDZV_PASSWORD_FILE, "file holding the user's password"),
        ("--rdzv-credentials-dir", PodEnv.RDZV_CREDENTIALS_DIR,
         "directory with username, password, ca.crt, tls.crt, tls.key (each if present)"),
    ):
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), default=default(var, None),
                       help=f"{what} (env {var})")
    p.add_argument("--rdzv-conf", "--rdzv_conf", dest="rdzv_conf", default="",
                   help="k=v,...: lease_ttl (2), settle (1.0), reform_timeout (30), "
                        "join_timeout (600)")
    p.add_argument("--max-restarts", "--max_restarts", dest="max_restarts", type=int,
                   default=int(default(PodEnv.MAX_RESTARTS, str(contract.DEFAULT_MAX_RESTARTS))
                               or 0),
                   help=f"failures this node may restart from (env {PodEnv.MAX_RESTARTS})")
    p.add_argument("--monitor-interval", "--monitor_interval", dest="monitor_interval",
                   type=float, default=float(default(PodEnv.MONITOR_INTERVAL,
                                                     str(contract.DEFAULT_MONITOR_INTERVAL))
                                             or 0.5),
                   help=f"seconds between checks (env {PodEnv.MONITOR_INTERVAL})")
    p.add_argument("--hang-timeout", "--hang_timeout", dest="hang_timeout", type=float,
                   default=float(default(PodEnv.HANG_TIMEOUT, str(contract.DEFAULT_HANG_TIMEOUT))
                                 or 300),
                   help="seconds without a heartbeat before a process counts as hung; armed "
                        f"by its first heartbeat (env {PodEnv.HANG_TIMEOUT})")
    p.add_argument("--stop-timeout", "--stop_timeout", dest="stop_timeout", type=float,
                   default=30.0, help="grace between SIGTERM and SIGKILL of workers")
    p.add_argument("--termination-log", dest="termination_log",
                   default=default(PodEnv.TERMINATION_LOG, contract.DEFAULT_TERMINATION_LOG),
                   help=f"failure report file (env {PodEnv.TERMINATION_LOG})")
    p.add_argument("--node-id", dest="node_id", default=None,
                   help="unique id of this agent (default: hostname-pid-random)")
    p.add_argument("--local-addr", "--local_addr", dest="local_addr", default=None,
                   help="address peers reach this node at (default: hostname)")
    p.add_argument("--no-prewarm", dest="prewarm", action="store_false",
                   help="do not keep training processes with torch imported ready for restarts")
    p.add_argument("--no-inplace", dest="inplace", action="store_false",
                   default=os.environ.get("ELASTIC_INPLACE", "1") != "0",
                   help="always restart training processes on a resize, even those that can "
                        "resize in place (env ELASTIC_INPLACE=0)")
    p.add_argument("-m", "--module", action="store_true",
                   help="run the entrypoint as a module (python -m)")
    p.add_argument("--no-python", "--no_python", dest="no_python", action="store_true",
                   help="run the entrypoint as an executable, not with python")
    p.add_argument("entrypoint", help="training script (or module / executable)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the entrypoint")
    return p


def parse_security(ns: argparse.Namespace, env: Mapping[str, str]) -> EtcdSecurity:
    """TLS files and etcd credentials from flags/env (raises ConfigError naming the fix)."""
    try:
        return security_from_files(
            ca_file=ns.rdzv_ca_file, cert_file=ns.rdzv_cert_file, key_file=ns.rdzv_key_file,
            user=ns.rdzv_user, password_file=ns.rdzv_password_file,
            credentials_dir=ns.rdzv_credentials_dir, hint=env.get(PodEnv.RDZV_SECRET, ""))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def parse_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> AgentConfig:
    """Flags + environment -> validated AgentConfig (raises ConfigError naming the problem)."""
    env = os.environ if env is None else env
    ns = build_parser(env).parse_args(list(argv))
    if ns.rdzv_backend != BACKEND_NAME:
        raise ConfigError(f"--rdzv-backend={ns.rdzv_backend!r}: this launcher only speaks "
                          f"{BACKEND_NAME!r}; use torchrun for other backends")
    if not ns.rdzv_endpoint:
        raise ConfigError(f"no etcd endpoint: pass --rdzv-endpoint or set {PodEnv.RDZV_ENDPOINT}")
    if not ns.rdzv_id:
        raise ConfigError(f"no rendezvous id: pass --rdzv-id or set {PodEnv.RDZV_ID}")
    if ns.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node={ns.nproc_per_node}: must be >= 1")
    if ns.max_restarts < 0:
        raise ConfigError(f"--max-restarts={ns.max_restarts}: must be >= 0")
    if ns.monitor_interval <= 0 or ns.hang_timeout <= 0:
        raise ConfigError("--monitor-interval and --hang-timeout must be > 0")
    low, high = parse_nnodes(ns.nnodes)
    security = parse_security(ns, env)
    conf = parse_rdzv_conf(ns.rdzv_conf)
    unknown = set(conf) - {"lease_ttl", "settle", "reform_timeout", "join_timeout"}
    if unknown:
        raise ConfigError(f"--rdzv-conf: unknown key(s) {sorted(unknown)}; known: lease_ttl, "
                          "settle, reform_timeout, join_timeout")
    if ns.no_python:
        cmd = [ns.entrypoint, *ns.args]
    elif ns.module:
        cmd = [sys.executable, "-u", "-m", ns.entrypoint, *ns.args]
    else:
        cmd = [sys.executable, "-u", ns.entrypoint, *ns.args]
    hostname = socket.gethostname()
    try:
        return AgentConfig(
            cmd=cmd,
            rdzv_endpoint=ns.rdzv_endpoint,
            rdzv_id=ns.rdzv_id,
            # The pod's name first (HOSTNAME; a process-runtime pod's host is the machine):
            # the operator attributes reports by it and ignores ids of no pod of the job.
            node_id=ns.node_id or f"{env.get('HOSTNAME') or hostname}-{os.getpid()}-"
                                  f"{uuid.uuid4().hex[:6]}",
            local_addr=ns.local_addr or hostname,
            min_nodes=low,
            max_nodes=high,
            nproc_per_node=ns.nproc_per_node,
            max_restarts=ns.max_restarts,
            monitor_interval=ns.monitor_interval,
            hang_timeout=ns.hang_timeout,
            stop_timeout=ns.stop_timeout,
            termination_log=ns.termination_log or None,
            lease_ttl=int(conf.get("lease_ttl", DEFAULT_LEASE_TTL)),
            settle=float(conf.get("settle", DEFAULT_SETTLE)),
            reform_timeout=float(conf.get("reform_timeout", DEFAULT_REFORM_TIMEOUT)),
            join_timeout=float(conf.get("join_timeout", DEFAULT_JOIN_TIMEOUT)),
            prewarm=ns.prewarm and not ns.no_python,
            security=security,
            inplace=ns.inplace,
        )
    except ValueError as exc:
        raise ConfigError(f"--rdzv-conf={ns.rdzv_conf!r}: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the agent, return its exit code (0 success, 1 failure, 2 bad configuration)."""
    from launcher.agent import Agent

    logging.basicConfig(
        level=os.environ.get("ELASTIC_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s [launcher] %(message)s",
    )
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"python -m launcher: error: {exc}", file=sys.stderr)
        return 2
    return Agent(config).run()
