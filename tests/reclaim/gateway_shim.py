"""Run Jupyter Enterprise Gateway with its Kubernetes client reading a kubeconfig.

Run by the gateway's own interpreter (``.venv-gateway``), never imported by the tests.
``enterprise_gateway.services.processproxies.k8s`` calls ``config.load_incluster_config()`` when
it is imported, which only works inside a pod (a service-account token and CA under
/var/run/secrets). Outside one this points that call at ``$KUBECONFIG`` instead, so the
gateway's KubernetesProcessProxy drives the local cluster's API like a real one; nothing else
of the gateway changes. (Its kernel launcher, launch_kubernetes.py, already falls back to the
kubeconfig by itself.)
"""

import os
import sys

from kubernetes import config


def _load_kubeconfig(*_: object, **__: object) -> None:
    config.load_kube_config(os.environ["KUBECONFIG"])


config.load_incluster_config = _load_kubeconfig

from enterprise_gateway.enterprisegatewayapp import launch_instance  # noqa: E402

sys.exit(launch_instance())
