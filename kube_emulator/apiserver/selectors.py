"""Label and field selectors with the syntax and semantics of the Kubernetes API.

Label selectors (``?labelSelector=``): equality (``k=v``, ``k==v``, ``k!=v``), set-based
(``k in (a,b)``, ``k notin (a,b)``), existence (``k``) and non-existence (``!k``); a comma
joins requirements with AND. As in Kubernetes, ``k!=v`` and ``k notin (...)`` also match
objects that lack the label. Field selectors (``?fieldSelector=``) support ``=``, ``==`` and
``!=`` on the fields a resource declares (``metadata.name`` and ``metadata.namespace`` for
all; pods add ``spec.nodeName`` and ``status.phase``). A malformed selector raises
:class:`SelectorError`, which the server answers with 400 BadRequest like kube-apiserver.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_KEY_RE = re.compile(rf"^({_PREFIX}/)?{_NAME}$")
_VALUE_RE = re.compile(rf"^({_NAME})?$")
_SET_RE = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQ_RE = re.compile(r"^(?P<key>[^\s!=(),]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^\s!=(),]*)$")


class SelectorError(ValueError):
    """A selector string that Kubernetes would refuse; the message names the bad part."""


@dataclass(frozen=True)
class Requirement:
    """One label requirement: ``op`` is one of ``=``, ``!=``, ``in``, ``notin``, ``exists``,
    ``!``; ``values`` holds the right-hand side (empty for the existence operators)."""

    key: str
    op: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label map satisfies this requirement (Kubernetes semantics)."""
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects without the label, as in Kubernetes.
        return not present or labels[self.key] not in self.values


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in selector {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise SelectorError(f"unbalanced '(' in selector {text!r}")
    parts.append("".join(current))
    return parts


def _check_key(key: str, selector: str) -> str:
    if not _KEY_RE.match(key) or len(key) > 317:
        raise SelectorError(
            f"invalid label key {key!r} in selector {selector!r}: a qualified name is "
            "alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric "
            "(at most 63 characters), with an optional DNS-subdomain prefix and '/'"
        )
    return key


def _check_value(value: str, selector: str) -> str:
    if not _VALUE_RE.match(value):
        raise SelectorError(
            f"invalid label value {value!r} in selector {selector!r}: a valid label value "
            "is empty or alphanumerics, '-', '_' or '.', starting and ending with an "
            "alphanumeric, at most 63 characters"
        )
    return value


class LabelSelector:
    """A parsed label selector; an empty selector matches everything."""

    def __init__(self, requirements: Iterable[Requirement] = ()) -> None:
        self.requirements = tuple(requirements)

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse the ``labelSelector`` query string; raise :class:`SelectorError` if invalid."""
        if text is None or not text.strip():
            return cls()
        requirements: list[Requirement] = []
        for raw in _split_top_level(text):
            term = raw.strip()
            if not term:
                raise SelectorError(f"empty requirement in label selector {text!r}")
            if term.startswith("!"):
                key = _check_key(term[1:].strip(), text)
                requirements.append(Requirement(key, "!", frozenset()))
                continue
            set_match = _SET_RE.match(term)
            if set_match:
                key = _check_key(set_match["key"], text)
                values = [v.strip() for v in set_match["values"].split(",")]
                if set_match["values"].strip() == "" and set_match["op"] == "in":
                    raise SelectorError(f"'in' needs at least one value in {text!r}")
                checked = frozenset(_check_value(v, text) for v in values if v)
                requirements.append(Requirement(key, set_match["op"], checked))
                continue
            eq_match = _EQ_RE.match(term)
            if eq_match:
                key = _check_key(eq_match["key"], text)
                value = _check_value(eq_match["value"], text)
                op = "!=" if eq_match["op"] == "!=" else "="
                requirements.append(Requirement(key, op, frozenset({value})))
                continue
            if re.search(r"[\s=!()]", term):
                raise SelectorError(
                    f"unable to parse requirement {term!r} in label selector {text!r}: use "
                    "'k=v', 'k!=v', 'k in (a,b)', 'k notin (a,b)', 'k' or '!k'"
                )
            requirements.append(Requirement(_check_key(term, text), "exists", frozenset()))
        return cls(requirements)

    @classmethod
    def from_match_labels(cls, match_labels: Mapping[str, str]) -> LabelSelector:
        """The selector of a ``matchLabels`` map (every pair must be equal)."""
        return cls(Requirement(k, "=", frozenset({v})) for k, v in match_labels.items())

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether every requirement holds for ``labels`` (``None`` means no labels)."""
        current = labels or {}
        return all(req.matches(current) for req in self.requirements)

    def __str__(self) -> str:
        parts = []
        for req in self.requirements:
            if req.op == "exists":
                parts.append(req.key)
            elif req.op == "!":
                parts.append(f"!{req.key}")
            elif req.op in ("=", "!="):
                parts.append(f"{req.key}{req.op}{next(iter(req.values))}")
            else:
                parts.append(f"{req.key} {req.op} ({','.join(sorted(req.values))})")
        return ",".join(parts)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted field of ``obj`` as field selectors compare it ("" if absent)."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


class FieldSelector:
    """A parsed field selector over an allowed set of dotted fields."""

    def __init__(self, terms: Iterable[tuple[str, bool, str]] = ()) -> None:
        self.terms = tuple(terms)  # (field, equal?, value)

    @classmethod
    def parse(cls, text: str | None, allowed: Iterable[str]) -> FieldSelector:
        """Parse ``fieldSelector``; unknown fields raise :class:`SelectorError` naming them."""
        if text is None or not text.strip():
            return cls()
        allowed_set = set(allowed)
        terms: list[tuple[str, bool, str]] = []
        for raw in text.split(","):
            term = raw.strip()
            match = re.match(r"^(?P<field>[^=!\s]+)\s*(?P<op>==|!=|=)\s*(?P<value>.*)$", term)
            if not match:
                raise SelectorError(
                    f"invalid field selector {text!r}: each term is 'field=value', "
                    "'field==value' or 'field!=value'"
                )
            if match["field"] not in allowed_set:
                raise SelectorError(
                    f"field label not supported: {match['field']} (supported: "
                    f"{', '.join(sorted(allowed_set))})"
                )
            terms.append((match["field"], match["op"] != "!=", match["value"].strip()))
        return cls(terms)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether every term holds for ``obj``."""
        return all((field_value(obj, f) == v) == eq for f, eq, v in self.terms)
