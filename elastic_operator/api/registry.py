"""The list of CRDs this project serves; a new custom resource registers here."""

from elastic_operator.api import elasticjob, kernelreclaim
from elastic_operator.api.crd import CrdSpec

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
