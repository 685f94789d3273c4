"""Idle-reclaim controller: shuts down idle Jupyter kernels that hold GPUs, so elastic jobs can
grow into the freed GPUs (see docs/reclaim.md).

``rule`` decides for one kernel (pure), ``plan`` for one check (pure), ``jupyter`` and
``gpu_metrics`` probe, ``kube`` talks to the API server, ``handlers`` wires them into kopf.
"""
