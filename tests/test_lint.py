"""ruff is part of the test command, so a lint regression fails CI like any other defect."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("elastic_operator", "launcher", "kube_emulator")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the packages under ``root``, with the contracts of our pyproject."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_layering_contracts_hold() -> None:
    """pyproject's [tool.importlinter]: the emulator and the launcher import nothing of the
    operator, the three controllers are independent, the decisions do no I/O, no cycles."""
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("kube_emulator/client.py", "import launcher.contract", "kube_emulator imports nothing"),
        ("launcher/contract.py", "import elastic_operator.labels", "launcher never imports"),
        ("elastic_operator/api/kube.py", "import kube_emulator.client",
         "only elastic_operator.local"),
        ("elastic_operator/autoscaler/policy.py", "import elastic_operator.job.planner",
         "the three controllers are independent"),
        ("elastic_operator/job/planner.py", "import kopf", "the decisions do no I/O"),
        ("elastic_operator/api/crd.py", "import elastic_operator.api.registry",
         "no import cycles"),
        ("elastic_operator/labels.py", "import elastic_operator.api.common", "operator layers"),
    ],
)
def test_a_broken_contract_fails(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The contracts can fail: a copy of the tree with one offending import breaks its one."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / module
    target.write_text(f"{target.read_text()}\n{line}  # the offending import\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = result.stdout[result.stdout.index("Broken contracts"):]
    assert contract in broken, result.stdout


def test_the_operator_image_does_not_carry_the_emulator() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile.operator").read_text()
    copies = [line for line in dockerfile.splitlines() if line.strip().upper().startswith("COPY")]
    assert copies, "Dockerfile.operator copies nothing?"
    assert not [line for line in copies if "kube_emulator" in line or " . " in f"{line} "], copies
    assert '"rich' not in dockerfile, "rich belongs to the [local] extra, not the image"
