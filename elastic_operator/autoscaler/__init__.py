"""The GPU autoscaler: grows elastic jobs into free GPUs and shrinks them for higher priorities.

- :mod:`~elastic_operator.autoscaler.capacity`: free GPUs per node, kept current from watch
  events (no polling of the cluster).
- :mod:`~elastic_operator.autoscaler.policy`: the pure decision (jobs, capacity, history, now)
  -> target replicas with reasons.
- :mod:`~elastic_operator.autoscaler.handlers`: the kopf wiring that feeds the capacity, runs the
  decision loop and writes ``spec.replicas``.
"""
