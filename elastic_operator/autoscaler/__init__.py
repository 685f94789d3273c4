"""The GPU autoscaler: grows elastic jobs into free GPUs and shrinks them for higher priorities.

- :mod:`~elastic_operator.autoscaler.capacity`: free GPUs per node, kept current from watch
  events (no polling of the cluster).
- :mod:`~elastic_operator.autoscaler.views`: cached API objects read into the policy's inputs.
- :mod:`~elastic_operator.autoscaler.policy`: the pure decision (jobs, capacity, history, now)
  -> target replicas with reasons: its rules, the growth stabilization and the entry points.
  It is built from :mod:`~elastic_operator.autoscaler.model` (inputs and outcome),
  :mod:`~elastic_operator.autoscaler.allocation` (one allocation against one capacity),
  :mod:`~elastic_operator.autoscaler.preemption` (shrinking others for waiting demand),
  :mod:`~elastic_operator.autoscaler.pool` (GPUs left and best fit) and
  :mod:`~elastic_operator.autoscaler.ledger` (the state one allocation builds).
- :mod:`~elastic_operator.autoscaler.handlers`: the kopf wiring that feeds the capacity, runs the
  decision loop and writes ``spec.replicas``.
"""
