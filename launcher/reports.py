"""Failure reports: where the operator (and ``kubectl describe``) can read why a worker stopped.

Each report (``contract.FailureReport``) goes to two places, independently:
- the pod's termination log (``/dev/termination-log`` by default), which Kubernetes copies into
  the container's terminated state (``message``), read by the operator from the Pod;
- the etcd key ``contract.failure_key(rdzv_id, node_id)`` (latest report wins), read by the
  operator or a person with ``etcdctl get --prefix /elastic/<id>/failures/``.

A departure (``FailureReport.DEPARTURES``: the agent was told to leave) goes to the termination
log only: it is no failure, and etcd's failure keys are for failures. A ``Completion`` goes to
the termination log too, so the pod itself says that training finished.

Neither write may fail the agent: an unwritable path, an unreachable etcd or one that refuses
the job's credentials is logged and skipped (the other destination and the agent's exit code
still tell the story).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from launcher import contract
from launcher.etcd_client import EtcdAuthError
from launcher.etcd_session import EtcdSession, EtcdUnavailableError

log = logging.getLogger(__name__)


class FailureReporter:
    """Writes ``FailureReport``s for one node of one rendezvous."""

    def __init__(
        self,
        rdzv_id: str,
        node_id: str,
        termination_log: str | os.PathLike[str] | None,
        session: EtcdSession | None = None,
    ) -> None:
        self.rdzv_id = rdzv_id
        self.node_id = node_id
        self.termination_log = Path(termination_log) if termination_log else None
        self.session = session

    def report(
        self,
        reason: str,
        message: str,
        rank: int = -1,
        exit_code: int | None = None,
        generation: int | None = None,
    ) -> contract.FailureReport:
        """Build a report, write it to both destinations, return it."""
        if reason not in contract.FailureReport.REASONS:
            raise ValueError(
                f"reason={reason!r} is not one of {contract.FailureReport.REASONS}"
            )
        report = contract.FailureReport(
            reason=reason, message=message, node_id=self.node_id, rank=rank,
            exit_code=exit_code, generation=generation, timestamp=time.time(),
        )
        level = logging.INFO if reason in contract.FailureReport.DEPARTURES else logging.ERROR
        log.log(level, "%s on node %s: %s (rank %d, exit %s): %s",
                "departure" if level == logging.INFO else "failure", self.node_id, reason, rank,
                exit_code, message)
        self.write_termination_log(report)
        if reason not in contract.FailureReport.DEPARTURES:
            self.write_etcd(report)
        return report

    def write_termination_log(self, report: contract.FailureReport | contract.Completion) -> bool:
        """Overwrite the termination log with ``report``; False (logged) if not writable."""
        if self.termination_log is None:
            return False
        try:
            self.termination_log.write_text(report.to_json())
            return True
        except OSError as exc:
            log.warning("cannot write termination log %s: %s (report kept in etcd and logs)",
                        self.termination_log, exc)
            return False

    def write_etcd(self, report: contract.FailureReport) -> bool:
        """Put ``report`` at ``contract.failure_key``; False (logged) if etcd is unreachable."""
        if self.session is None:
            return False
        try:
            self.session.put(contract.failure_key(self.rdzv_id, self.node_id),
                             report.to_json().encode())
            return True
        except (EtcdUnavailableError, EtcdAuthError) as exc:
            log.warning("cannot write failure report to etcd: %s", exc)
            return False
