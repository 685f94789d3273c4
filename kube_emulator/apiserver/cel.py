"""A small, exact subset of CEL for ``x-kubernetes-validations`` rules.

Supported: literals (integers, floats, single- or double-quoted strings, ``true``, ``false``,
``null``); ``self`` and field access ``self.a.b``; ``has(self.a.b)``; ``size(x)`` and
``x.size()`` on strings, lists and maps; ``+``, ``-``, ``*`` on numbers; comparisons ``<``,
``<=``, ``>``, ``>=``, ``==``, ``!=``; ``!``, ``&&``, ``||``; parentheses.

Anything else (``oldSelf`` transition rules, macros like ``all()``/``exists()``, functions
other than ``has``/``size``, the ternary operator, ...) is **not** treated as valid: the rule
is skipped with one warning per distinct rule, so a test against this emulator can pass where
a real cluster would refuse the object. Keep CRD rules inside the subset to be covered.

Runtime errors follow CEL: reading a missing field is ``no such key: NAME`` and comparing
values of different types is ``no such overload``; kube-apiserver reports both as invalid.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"""
    \s*(?:
      (?P<num>\d+\.\d+|\d+)
    | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op>&&|\|\||<=|>=|==|!=|[<>!().+\-*,])
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""", re.VERBOSE)

Node = Callable[[Any], Any]
_warned: set[str] = set()


class UnsupportedRule(ValueError):
    """A rule outside the supported subset."""


class CelError(RuntimeError):
    """A runtime error while evaluating a supported rule (reported as a validation error)."""


def _tokens(rule: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    rule = rule.rstrip()
    while pos < len(rule):
        match = _TOKEN_RE.match(rule, pos)
        if not match or match.end() == pos:
            raise UnsupportedRule(f"unexpected text at {rule[pos:]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, rule: str) -> None:
        self.tokens = _tokens(rule)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise UnsupportedRule("unexpected end of rule")
        token = self.tokens[self.pos]
        if expected is not None and token[1] != expected:
            raise UnsupportedRule(f"expected {expected!r}, found {token[1]!r}")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.or_()
        if self.pos != len(self.tokens):
            raise UnsupportedRule(f"unexpected {self.peek()!r}")
        return node

    def or_(self) -> Node:
        left = self.and_()
        while self.peek() == "||":
            self.take()
            right = self.and_()
            left = _logic(left, right, stop_on=True)
        return left

    def and_(self) -> Node:
        left = self.unary()
        while self.peek() == "&&":
            self.take()
            right = self.unary()
            left = _logic(left, right, stop_on=False)
        return left

    def unary(self) -> Node:
        if self.peek() == "!":
            self.take()
            inner = self.unary()
            return lambda s: not _bool(inner(s))
        return self.comparison()

    def comparison(self) -> Node:
        left = self.sum()
        op = self.peek()
        if op in ("<", "<=", ">", ">=", "==", "!="):
            self.take()
            right = self.sum()
            return _compare(op, left, right)
        return left

    def sum(self) -> Node:
        left = self.product()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            left = _arith(op, left, self.product())
        return left

    def product(self) -> Node:
        left = self.postfix()
        while self.peek() == "*":
            self.take()
            left = _arith("*", left, self.postfix())
        return left

    def postfix(self) -> Node:
        node = self.primary()
        while self.peek() == ".":
            self.take()
            kind, name = self.take()
            if kind != "ident":
                raise UnsupportedRule(f"expected a field name after '.', found {name!r}")
            if self.peek() == "(":
                if name != "size":
                    raise UnsupportedRule(f"method {name}() is not in the supported subset")
                self.take("(")
                self.take(")")
                node = _size(node)
            else:
                node = _field(node, name)
        return node

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "num":
            number = float(text) if "." in text else int(text)
            return lambda s: number
        if kind == "str":
            literal = bytes(text[1:-1], "utf-8").decode("unicode_escape")
            return lambda s: literal
        if text == "(":
            inner = self.or_()
            self.take(")")
            return inner
        if text == "-":
            inner = self.postfix()
            return _arith("-", lambda s: 0, inner)
        if kind == "ident":
            return self._ident(text)
        raise UnsupportedRule(f"unexpected {text!r}")

    def _ident(self, text: str) -> Node:
        constants = {"true": True, "false": False, "null": None}
        if text in constants:
            value = constants[text]
            return lambda s: value
        if text == "self":
            return lambda s: s
        if text == "has":
            self.take("(")
            start = self.pos
            target = self.postfix()
            self.take(")")
            path = self.tokens[start:self.pos - 1]
            if len(path) < 3 or path[-2][1] != "." or path[-1][0] != "ident":
                raise UnsupportedRule("has() needs a field selection like has(self.a)")
            holder_node = _strip_last_field(target)
            name = path[-1][1]
            return lambda s: isinstance(holder_node(s), dict) and name in holder_node(s)
        if text == "size":
            self.take("(")
            inner = self.or_()
            self.take(")")
            return _size(inner)
        raise UnsupportedRule(f"identifier {text!r} is not in the supported subset")


def _strip_last_field(node: Node) -> Node:
    holder = getattr(node, "holder", None)
    if holder is None:
        raise UnsupportedRule("has() needs a field selection like has(self.a)")
    return holder


def _field(holder: Node, name: str) -> Node:
    def read(s: Any) -> Any:
        value = holder(s)
        if not isinstance(value, dict) or name not in value:
            raise CelError(f"no such key: {name}")
        return value[name]

    read.holder = holder  # type: ignore[attr-defined]
    return read


def _size(inner: Node) -> Node:
    def size(s: Any) -> int:
        value = inner(s)
        if not isinstance(value, str | list | dict):
            raise CelError("no such overload: size")
        return len(value)
    return size


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise CelError("no such overload: expected a boolean")
    return value


def _logic(left: Node, right: Node, *, stop_on: bool) -> Node:
    def run(s: Any) -> bool:
        if _bool(left(s)) is stop_on:
            return stop_on
        return _bool(right(s))
    return run


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare(op: str, left: Node, right: Node) -> Node:
    def run(s: Any) -> bool:
        a, b = left(s), right(s)
        if op in ("==", "!="):
            same = a == b and (_numeric(a) == _numeric(b))
            return same if op == "==" else not same
        if not ((_numeric(a) and _numeric(b)) or (isinstance(a, str) and isinstance(b, str))):
            raise CelError(f"no such overload: {op}")
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    return run


def _arith(op: str, left: Node, right: Node) -> Node:
    def run(s: Any) -> Any:
        a, b = left(s), right(s)
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return a + b
        if not (_numeric(a) and _numeric(b)):
            raise CelError(f"no such overload: {op}")
        return {"+": a + b, "-": a - b, "*": a * b}[op]
    return run


@functools.lru_cache(maxsize=256)
def compile_rule(rule: str) -> Node:
    """Compile a rule of the subset; raise :class:`UnsupportedRule` for anything else."""
    return _Parser(rule).parse()


def evaluate_rule(rule: str, self_value: Any) -> str | None:
    """None when the rule holds (or is outside the subset, after a one-time warning);
    ``"false"`` when it evaluates to false; otherwise the runtime error's message."""
    try:
        node = compile_rule(rule)
    except UnsupportedRule as exc:
        if rule not in _warned:
            _warned.add(rule)
            logger.warning("x-kubernetes-validations rule %r is outside the emulator's CEL "
                           "subset (%s); it is NOT checked here", rule, exc)
        return None
    try:
        result = node(self_value)
    except CelError as exc:
        return str(exc)
    if not isinstance(result, bool):
        return "no such overload: the rule must evaluate to a boolean"
    return None if result else "false"
