"""The list of CRDs this project serves; a new custom resource registers here.

:mod:`elastic_operator.api.crd` knows how to make a CRD of any model and nothing of which ones
exist, so the manifests of all of them (:func:`all_crds`, :func:`write_all`) are made here.
"""

from pathlib import Path
from typing import Any

from elastic_operator.api import elasticjob, kernelreclaim
from elastic_operator.api.crd import CrdSpec, crd_manifest, render

ELASTICJOB = CrdSpec(
    kind=elasticjob.KIND,
    plural=elasticjob.PLURAL,
    singular=elasticjob.SINGULAR,
    short_names=elasticjob.SHORT_NAMES,
    spec_model=elasticjob.ElasticJobSpec,
    status_model=elasticjob.ElasticJobStatus,
    description="An elastic PyTorch training job whose worker count moves between min and max.",
    scale=True,
    printer_columns=elasticjob.PRINTER_COLUMNS,
    spec_rules=elasticjob.SPEC_RULES,
)

KERNELRECLAIMPOLICY = CrdSpec(
    kind=kernelreclaim.KIND,
    plural=kernelreclaim.PLURAL,
    singular=kernelreclaim.SINGULAR,
    short_names=kernelreclaim.SHORT_NAMES,
    spec_model=kernelreclaim.KernelReclaimPolicySpec,
    status_model=kernelreclaim.KernelReclaimPolicyStatus,
    description="When idle Jupyter kernels that hold GPUs are shut down to free the GPUs.",
    printer_columns=kernelreclaim.PRINTER_COLUMNS,
)

CRDS: list[CrdSpec] = [ELASTICJOB, KERNELRECLAIMPOLICY]


def all_crds() -> list[dict[str, Any]]:
    """Every CRD this project defines, in a stable order."""
    return [crd_manifest(s) for s in CRDS]


def write_all(directory: Path) -> list[Path]:
    """Write one ``<plural>.<group>.yaml`` per CRD into ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for crd in all_crds():
        path = directory / f"{crd['metadata']['name']}.yaml"
        path.write_text(render(crd))
        paths.append(path)
    return paths
