"""A Kubernetes emulator: an API server, a scheduler, a kubelet that runs pods as local
processes, emulated GPU nodes and an etcd helper.

It is the judge of the operator in tests and the ground of ``elastic-operator local``, so it
imports nothing from ``elastic_operator`` or ``launcher`` (``tests/test_lint.py`` checks it):
whatever the product needs it to know (the GPU resource name, the variable that carries a
pod's termination-message file) the product passes in as settings.

Rooms:
- :mod:`kube_emulator.apiserver`: the API server over HTTP (discovery, CRUD, watch, CRDs,
  garbage collection, OpenAPI, Table output, server-side apply: what a real kubectl needs);
- :mod:`kube_emulator.node`: what runs on the emulated nodes (scheduler, kubelet, process
  runtime, placement rules, the Node objects);
- :mod:`kube_emulator.controllers`: what kube-controller-manager does for built-in kinds
  (Deployments, the pod GC of deleted nodes);
- :mod:`kube_emulator.client`: the small REST client the node components and controllers
  use;
- :mod:`kube_emulator.etcd`: a real etcd subprocess for tests and the local cluster;
- :mod:`kube_emulator.times`: the emulator's RFC 3339 clock.
"""
