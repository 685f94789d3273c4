"""The emulator's clock as Kubernetes writes it: RFC 3339 UTC timestamps, seconds precision.

The emulator has its own formatter rather than the product's: it judges the operator, so the
wire format it writes must not change when the product's changes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def now_rfc3339(offset_seconds: int = 0) -> str:
    """The current UTC time (plus ``offset_seconds``) as ``2006-01-02T15:04:05Z``."""
    moment = datetime.now(UTC) + timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
