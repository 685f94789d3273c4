"""Server-side printing: the ``meta.k8s.io/v1`` Table that ``kubectl get`` asks for.

kubectl sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...`` and prints the
columns the server chooses (``priority`` 1 columns only with ``-o wide``). As kube-apiserver:
a custom resource gets Name plus its version's ``additionalPrinterColumns`` (JSONPath cells
typed by the column: ``date`` becomes an age such as ``5m``, a value of the wrong type is
empty), or Name and Age without any; the built-in kinds get the columns of
:mod:`~kube_emulator.apiserver.printers`; anything else Name and Created At. Each row
carries the object as ``includeObject`` asks (``Metadata`` by default: a
PartialObjectMetadata). Pure functions; the HTTP layer decides when a Table is wanted.

Simplification: JSONPath covers fields, ``[N]``, ``[*]`` and ``[?(@.key=="value")]``
filters (what printer columns use in practice).
"""

from __future__ import annotations

import json
import re
from typing import Any

from kube_emulator.apiserver import errors, printers
from kube_emulator.apiserver.printers import AGE, NAME, Column, age
from kube_emulator.apiserver.resources import ResourceInfo

Obj = dict[str, Any]
TABLE_VERSIONS = ("v1", "v1beta1")
_NAME_HELP = ("Name must be unique within a namespace. Is required when creating resources, "
              "although some resources may allow a client to request the generation of an "
              "appropriate name automatically.")


def table_version(accept: str) -> str | None:
    """The ``meta.k8s.io`` version of the first Table form in an Accept header, else None."""
    for item in accept.split(","):
        params = dict(p.strip().partition("=")[::2] for p in item.split(";")[1:])
        if (params.get("as") == "Table" and params.get("g") == "meta.k8s.io"
                and params.get("v") in TABLE_VERSIONS):
            return params["v"]
    return None


# ----- JSONPath (the printer-column subset) ----------------------------------------------
_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.-]+)\s*==\s*"
                   r"[\"']([^\"']*)[\"']\)\]")


def json_path(obj: Any, path: str) -> list[Any]:
    """Every value ``path`` (``.status.conditions[?(@.type=="Ready")].status``) selects."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    values = [obj]
    pos = 0
    while pos < len(path):
        step = _STEP.match(path, pos)
        if step is None:
            raise errors.bad_request(f"unsupported JSONPath {path!r} at {path[pos:]!r}")
        pos = step.end()
        field, index, key, wanted = step.groups()
        out: list[Any] = []
        for value in values:
            if field is not None and isinstance(value, dict) and field in value:
                out.append(value[field])
            elif index is not None and isinstance(value, list):
                out.extend(value if index == "*" else value[int(index):int(index) + 1])
            elif key is not None and isinstance(value, list):
                out.extend(v for v in value if str(_lookup(v, key)) == wanted)
        values = out
    return values


def _lookup(value: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _typed(kind: str, value: Any) -> Any:
    """apiextensions' cellForJSONValue: the cell of a printer column, None when mistyped."""
    if kind == "string":
        return value if isinstance(value, str) else _go_print(value)
    if kind == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "date" and isinstance(value, str):
        return age(value)
    return None


def _go_print(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# ----- columns per resource ---------------------------------------------------------------
def _custom_columns(info: ResourceInfo) -> list[Column]:
    columns: list[Column] = [NAME]
    for spec in info.printer_columns:
        kind, path = str(spec.get("type") or "string"), str(spec.get("jsonPath") or "")

        def cell(obj: Obj, kind: str = kind, path: str = path) -> Any:
            found = json_path(obj, path)
            return _typed(kind, found[0]) if found else None
        columns.append((str(spec["name"]), kind, str(spec.get("format") or ""),
                        int(spec.get("priority") or 0), cell))
    return columns if info.printer_columns else [NAME, AGE]


def columns_for(info: ResourceInfo) -> list[Column]:
    """The columns kube-apiserver prints for ``info``."""
    if info.schema is not None:
        return _custom_columns(info)
    builtin = printers.BUILTIN_COLUMNS.get(info.storage_key)
    if builtin is not None:
        return builtin()
    return [NAME, ("Created At", "date", "", 0, lambda o: (o.get("metadata") or {}).get(
        "creationTimestamp"))]


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {}}


def table(info: ResourceInfo, items: list[Obj], version: str, *, include: str | None = None,
          list_meta: Obj | None = None, headers: bool = True) -> Obj:
    """A Table of ``items``; ``include`` is the ``includeObject`` parameter (None, Metadata,
    Object; default Metadata); ``headers`` False omits the column definitions (later events
    of a watch, as kube-apiserver does)."""
    include = include or "Metadata"
    if include not in ("None", "Metadata", "Object"):
        raise errors.bad_request(f"includeObject={include!r}: must be None, Metadata or Object")
    columns = columns_for(info)
    rows = []
    for obj in items:
        row: Obj = {"cells": [cell(obj) for *_, cell in columns]}
        embedded = _row_object(obj, include)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    definitions = [{"name": name, "type": kind, "format": fmt, "priority": priority,
                    "description": _NAME_HELP if fmt == "name" else name}
                   for name, kind, fmt, priority, _ in columns] if headers else []
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}",
            "metadata": list_meta or {}, "columnDefinitions": definitions, "rows": rows}
