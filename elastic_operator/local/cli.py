"""``elastic-operator local ...``: the embedded cluster from the command line.

``up`` starts a :class:`~elastic_operator.local.cluster.LocalCluster` as a background process
(``--foreground`` keeps it attached), ``down`` stops it; ``apply``, ``get``, ``delete`` and
``logs`` talk to it through the kubeconfig it wrote, like kubectl; ``demo`` runs the README's
example job on a private cluster with live progress and optional chaos, then tears it down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from elastic_operator.api.kube import TERMINAL_PHASES
from elastic_operator.labels import DEFAULT_GPU_RESOURCE
from elastic_operator.local import kubectl
from elastic_operator.local.cluster import (
    DEFAULT_STATE_DIR,
    STATE_FILE,
    ClusterConfig,
    ClusterState,
    LocalCluster,
)
from kube_emulator.client import ApiClient, ApiError, resource_path

UP_TIMEOUT = 180.0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="where the cluster keeps kubeconfig, logs and pid "
                             "(default: %(default)s)")


def _cluster_options(parser: argparse.ArgumentParser, nodes: int, gpus: int) -> None:
    parser.add_argument("--nodes", type=int, default=nodes, help="emulated nodes")
    parser.add_argument("--gpus-per-node", type=int, default=gpus,
                        help="allocatable GPUs of each node")
    parser.add_argument("--gpu-resource", default=DEFAULT_GPU_RESOURCE,
                        help="extended resource name of a GPU (default: %(default)s)")


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``elastic-operator local``."""
    from elastic_operator.local import demo

    sub = parser.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start the embedded cluster in the background")
    _common(up)
    _cluster_options(up, nodes=2, gpus=1)
    up.add_argument("--no-operator", action="store_true",
                    help="do not start the operator (run it yourself against the kubeconfig)")
    up.add_argument("--foreground", action="store_true",
                    help="stay attached; Ctrl-C stops the cluster")
    down = sub.add_parser("down", help="stop the embedded cluster and every pod process")
    _common(down)
    apply = sub.add_parser("apply", help="create or update objects from a YAML file")
    _common(apply)
    apply.add_argument("-f", "--filename", required=True, help="YAML file ('-' for stdin)")
    apply.add_argument("-n", "--namespace", default="default")
    get = sub.add_parser("get", help="list objects: ej, pods, nodes, events, ...")
    _common(get)
    get.add_argument("kind", help="ej | pods | nodes | events | any served resource")
    get.add_argument("name", nargs="?")
    get.add_argument("-n", "--namespace", default="default")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=("wide", "yaml", "json"))
    delete = sub.add_parser("delete", help="delete an object")
    _common(delete)
    delete.add_argument("kind")
    delete.add_argument("name")
    delete.add_argument("-n", "--namespace", default="default")
    logs = sub.add_parser("logs", help="print a pod's log")
    _common(logs)
    logs.add_argument("pod")
    logs.add_argument("-c", "--container")
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing until the pod ends")
    demo.configure(sub.add_parser("demo", help="run the example ElasticJob end to end with "
                                               "live progress (the README's main command)"))


def execute(args: argparse.Namespace) -> int:
    """Run the chosen action; returns the exit code."""
    action = args.local_command
    if action == "demo":
        from elastic_operator.local import demo

        return demo.execute(args)
    if action == "up":
        return cmd_up(args)
    if action == "down":
        return cmd_down(args)
    try:
        return asyncio.run(_client_action(args))
    except kubectl.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"Error from server ({exc.reason or exc.code}): {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ----- up / down ------------------------------------------------------------------------
def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    running = ClusterState.load(state_dir)
    if running is not None and _alive(running.pid):
        print(f"a local cluster already runs from {state_dir} (pid {running.pid}); "
              f"stop it with `elastic-operator local down --state-dir {state_dir}`",
              file=sys.stderr)
        return 1
    config = ClusterConfig(state_dir=state_dir, nodes=args.nodes,
                           gpus_per_node=args.gpus_per_node, gpu_resource=args.gpu_resource,
                           operator=not args.no_operator)
    if args.foreground:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        return asyncio.run(_foreground(config))
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        (state_dir / STATE_FILE).unlink()
    log_path = state_dir / "logs" / "cluster.log"
    cmd = [sys.executable, "-m", "elastic_operator.cli", "local", "up", "--foreground",
           "--state-dir", str(state_dir), "--nodes", str(args.nodes),
           "--gpus-per-node", str(args.gpus_per_node), "--gpu-resource", args.gpu_resource]
    if args.no_operator:
        cmd.append("--no-operator")
    with open(log_path, "ab") as log:
        daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        state = ClusterState.load(state_dir)
        if state is not None and state.pid == daemon.pid:
            print(f"local cluster up (pid {state.pid}): {state.url}\n"
                  f"  nodes: {state.nodes} x {state.gpus_per_node} GPU(s)\n"
                  f"  kubeconfig: {state.kubeconfig}\n"
                  f"  etcd: {state.etcd_endpoint}\n"
                  f"  logs: {state_dir / 'logs'}\n"
                  f"next: elastic-operator local apply -f examples/elastic-job.yaml")
            return 0
        if daemon.poll() is not None:
            break
        time.sleep(0.2)
    if daemon.poll() is None:
        daemon.kill()
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
    print(f"the local cluster did not start; last lines of {log_path}:\n{tail}",
          file=sys.stderr)
    return 1


async def _foreground(config: ClusterConfig) -> int:
    cluster = LocalCluster(config)
    await cluster.start()
    await cluster.serve()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    state = ClusterState.load(state_dir)
    if state is None:
        print(f"no local cluster runs from {state_dir}", file=sys.stderr)
        return 0
    if _alive(state.pid):
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(state.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    # The cluster process cleans up after itself; if it was killed, do its job.
    for pid in (state.pid, state.operator_pid, state.etcd_pid):
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
    with contextlib.suppress(OSError):
        (state_dir / STATE_FILE).unlink()
    print("local cluster stopped")
    return 0


# ----- apply / get / delete / logs ------------------------------------------------------
def connect(state_dir: Path) -> ApiClient:
    """A client for the cluster running from ``state_dir``; UsageError when none runs."""
    state = ClusterState.load(state_dir)
    if state is None or not _alive(state.pid):
        raise kubectl.UsageError(f"no local cluster runs from {state_dir}; start one with "
                                 "`elastic-operator local up`")
    return ApiClient.from_kubeconfig(state.kubeconfig)


async def _client_action(args: argparse.Namespace) -> int:
    async with connect(Path(args.state_dir)) as client:
        action = args.local_command
        if action == "apply":
            return await _apply(client, args)
        if action == "get":
            return await _get(client, args)
        if action == "delete":
            kinds = await kubectl.discover(client)
            kind = kubectl.resolve(kinds, args.kind)
            await client.delete(kind.path(args.namespace, args.name))
            print(f'{kind.qualified} "{args.name}" deleted')
            return 0
        return await _logs(client, args)


async def _apply(client: ApiClient, args: argparse.Namespace) -> int:
    source = args.filename
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise kubectl.UsageError(f"cannot read {source}: {exc.strerror}") from None
    docs = kubectl.load_manifests(text, source)
    try:
        for line in await kubectl.apply(client, docs, args.namespace):
            print(line)
    except ApiError as exc:
        print(f'Error from server ({exc.reason or exc.code}): error when applying "{source}": '
              f"{exc.message}\nnothing was created from {source}", file=sys.stderr)
        return 1
    return 0


async def _get(client: ApiClient, args: argparse.Namespace) -> int:
    kinds = await kubectl.discover(client)
    kind = kubectl.resolve(kinds, args.kind)
    namespace = None if args.all_namespaces else args.namespace
    if args.name:
        items = [await client.get(kind.path(namespace or "default", args.name))]
    else:
        items = (await client.get(kind.path(namespace))).get("items") or []
    if args.output in ("yaml", "json"):
        data = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
        print(yaml.safe_dump(data, sort_keys=False) if args.output == "yaml"
              else json.dumps(data, indent=2))
        return 0
    if not items:
        where = "" if not kind.namespaced or namespace is None else f" in {namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    if kind.kind == "Pod":
        header, rows = kubectl.pods_table(items, args.output == "wide")
    elif kind.kind == "Node":
        pods = (await client.get(resource_path("pods"))).get("items") or []
        header, rows = kubectl.nodes_table(items, pods, DEFAULT_GPU_RESOURCE)
    elif kind.kind == "Event" and not kind.group:
        header, rows = kubectl.events_table(items)
    else:
        header, rows = await kubectl.custom_table(client, kind, items)
    if args.all_namespaces and kind.namespaced:
        header = ["NAMESPACE", *header]
        rows = [[i["metadata"].get("namespace", ""), *r] for i, r in zip(items, rows,
                                                                          strict=True)]
    print(kubectl.render_table(header, rows))
    return 0


async def _logs(client: ApiClient, args: argparse.Namespace) -> int:
    path = resource_path("pods", args.namespace, args.pod)
    pod = await client.get(path)
    containers = [c["name"] for c in pod["spec"].get("containers") or ()]
    container = args.container or (containers[0] if containers else "")
    if container not in containers:
        raise kubectl.UsageError(f"container {container!r} is not valid for pod {args.pod} "
                                 f"(containers: {', '.join(containers)})")
    if not args.follow:
        text = await client.request("GET", path + "/log", params={"container": container})
        sys.stdout.write(str(text))
        return 0
    log_file = Path(args.state_dir) / "pods" / args.namespace / args.pod / f"{container}.log"
    offset = 0
    while True:
        with contextlib.suppress(OSError), open(log_file, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        try:
            pod = await client.get(path)
        except ApiError as exc:
            if exc.code == 404:
                return 0
            raise
        if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            with contextlib.suppress(OSError), open(log_file, "rb") as handle:
                handle.seek(offset)
                sys.stdout.write(handle.read().decode(errors="replace"))
            return 0
        await asyncio.sleep(0.5)
