"""Errors of the emulated API server, rendered as Kubernetes ``Status`` objects.

Every failure a client can see is an :class:`ApiError` whose :meth:`ApiError.status` is the
body kube-apiserver sends: ``{"kind": "Status", "apiVersion": "v1", "status": "Failure",
"message", "reason", "code", "details"}``. Constructors name the reason and code so that
clients (kopf, kubernetes_asyncio, kubectl) take the same branches as against a real cluster.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A failed API call with its HTTP code, Kubernetes reason and Status details."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The Kubernetes Status body of this error."""
        body: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(name: str | None, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": kind}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return details


def not_found(group: str, plural: str, name: str) -> ApiError:
    """404 NotFound, e.g. ``pods "x" not found``."""
    qualified = f"{plural}.{group}" if group else plural
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found',
                    _details(name, group, plural))


def already_exists(group: str, plural: str, name: str) -> ApiError:
    """409 AlreadyExists."""
    qualified = f"{plural}.{group}" if group else plural
    return ApiError(409, "AlreadyExists", f'{qualified} "{name}" already exists',
                    _details(name, group, plural))


def conflict(group: str, plural: str, name: str, why: str) -> ApiError:
    """409 Conflict (optimistic concurrency), worded as kube-apiserver words it."""
    qualified = f"{plural}.{group}" if group else plural
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
                    _details(name, group, plural))


def invalid(kind_qualified: str, name: str, group: str, kind: str,
            causes: list[dict[str, str]]) -> ApiError:
    """422 Invalid with ``details.causes``; the message lists every ``field: message``."""
    parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"]
             for c in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details = _details(name, group, kind)
    details["causes"] = causes
    return ApiError(422, "Invalid", f'{kind_qualified} "{name}" is invalid: {joined}', details)


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def forbidden(message: str) -> ApiError:
    """403 Forbidden."""
    return ApiError(403, "Forbidden", message)


def method_not_allowed(message: str) -> ApiError:
    """405 MethodNotAllowed."""
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(message: str) -> ApiError:
    """415 UnsupportedMediaType."""
    return ApiError(415, "UnsupportedMediaType", message)


def gone(message: str) -> ApiError:
    """410 Gone with reason Expired (a resourceVersion older than the kept history)."""
    return ApiError(410, "Expired", message)


def too_many_requests(retry_after: int) -> ApiError:
    """429 TooManyRequests, as kube-apiserver's max-in-flight and priority-and-fairness
    filters refuse a request (the Retry-After header carries ``retry_after`` too)."""
    return ApiError(429, "TooManyRequests", "Too many requests, please try again later.",
                    {"retryAfterSeconds": retry_after})


def service_unavailable(retry_after: int) -> ApiError:
    """503 ServiceUnavailable, as an API server that cannot reach its storage answers."""
    return ApiError(503, "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                    {"retryAfterSeconds": retry_after})
