"""The committed built-in OpenAPI schemas are what scripts/builtin_openapi.py generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_committed_builtin_schemas_match_the_generator() -> None:
    spec = importlib.util.spec_from_file_location("builtin_openapi",
                                                  ROOT / "scripts" / "builtin_openapi.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    committed = (ROOT / "kube_emulator" / "apiserver" / "builtin_schemas.json").read_text()
    assert generator.render() == committed, "run: .venv/bin/python scripts/builtin_openapi.py"
