"""The ElasticJob controller: keeps each job's worker pods, Service, etcd credentials and status
in line with its spec and with what its agents report.

- :mod:`~elastic_operator.job.planner`: the pure decision (job, observed pods, rendezvous
  records, now) -> a plan of :mod:`~elastic_operator.job.actions` and the status to write;
  :mod:`~elastic_operator.job.observed` turns pods into the plain values it reads.
- :mod:`~elastic_operator.job.worker_manifests`: the worker Pod and headless Service manifests.
- :mod:`~elastic_operator.job.reconciler`: reads the watch cache
  (:mod:`~elastic_operator.job.watch_cache`) and the rendezvous records the agents wrote to etcd
  (:mod:`~elastic_operator.job.rendezvous_records`), asks the planner, applies the plan.
- :mod:`~elastic_operator.job.etcd_auth` and :mod:`~elastic_operator.job.etcd_credentials`:
  each job's etcd user and role on the shared etcd, and the Secret its workers mount.
- :mod:`~elastic_operator.job.metrics`: the operator's Prometheus metrics of jobs and pods.
- :mod:`~elastic_operator.job.handlers`: the kopf wiring that routes watch events to the
  reconciler.
"""
