"""The API models and the CRDs generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from elastic_operator.api import crd, registry
from elastic_operator.api.common import Condition, set_condition
from elastic_operator.api.elasticjob import ElasticJobSpec, SpecError, validate_spec

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = {"spec": {"containers": [{"name": "worker", "image": "x"}]}}


def test_committed_crds_match_the_models() -> None:
    expected = {c["metadata"]["name"] + ".yaml": crd.render(c) for c in registry.all_crds()}
    found = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    assert found == expected, "crds/ is stale: run `elastic-operator crds --write crds/`"


def _elasticjob_crd() -> dict:
    return next(c for c in registry.all_crds() if c["spec"]["names"]["kind"] == "ElasticJob")


def test_crd_has_status_and_scale_subresources_and_columns() -> None:
    version = _elasticjob_crd()["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Min", "Max", "Desired", "Ready", "Phase", "Age"]


def test_crd_schema_validation_rules() -> None:
    schema = _elasticjob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    assert set(spec["required"]) == {"maxReplicas", "template"}
    assert spec["properties"]["minReplicas"]["minimum"] == 1
    assert spec["properties"]["lrScaling"]["properties"]["policy"]["enum"] == [
        "linear", "sqrt", "none"
    ]
    assert spec["properties"]["batching"]["enum"] == ["fixedGlobal", "fixedPerWorker"]
    assert spec["properties"]["template"]["x-kubernetes-preserve-unknown-fields"] is True
    assert {"rule": "self.minReplicas <= self.maxReplicas"}.items() <= spec[
        "x-kubernetes-validations"
    ][0].items()
    text = crd.render(_elasticjob_crd())
    assert "$ref" not in text and "anyOf" not in text and "title" not in text


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"minReplicas": 0, "maxReplicas": 2}, "minReplicas"),
        ({"maxReplicas": -1}, "maxReplicas"),
        ({"maxReplicas": 2, "replicas": -3}, "replicas"),
        ({"maxReplicas": 2, "lrScaling": {"policy": "cubic"}}, "policy"),
        ({"maxReplicas": 2, "batching": "huge"}, "batching"),
        ({"maxReplicas": 2, "nprocPerNode": 0}, "nprocPerNode"),
        ({"maxReplicas": 2, "maxRestarts": -1}, "maxRestarts"),
        ({"maxReplicas": 2, "minReplica": 1}, "minReplica"),
    ],
)
def test_models_reject_bad_fields_by_name(spec: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ElasticJobSpec.model_validate({"template": TEMPLATE, **spec})
    assert field in str(info.value)


def test_missing_template_is_named() -> None:
    with pytest.raises(ValidationError, match="template"):
        ElasticJobSpec.model_validate({"maxReplicas": 2})


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"minReplicas": 3, "maxReplicas": 2, "template": TEMPLATE}, "spec.minReplicas"),
        ({"maxReplicas": 2, "template": {}}, "spec.template.spec"),
        ({"maxReplicas": 2, "template": {"spec": {"containers": []}}},
         "spec.template.spec.containers"),
        ({"maxReplicas": 2, "template": {"spec": {"containers": [{"image": "x"}]}}},
         "spec.template.spec.containers[0].name"),
        ({"maxReplicas": 2, "template": {"spec": {**TEMPLATE["spec"], "restartPolicy": "Always"}}},
         "spec.template.spec.restartPolicy"),
    ],
)
def test_operator_side_rules_name_field_and_fix(spec: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(ElasticJobSpec.model_validate(spec))
    assert info.value.field == field
    assert info.value.fix


def test_valid_spec_passes_and_defaults_are_sane() -> None:
    spec = ElasticJobSpec.model_validate({"maxReplicas": 4, "template": TEMPLATE})
    validate_spec(spec)
    assert (spec.minReplicas, spec.replicas, spec.nprocPerNode) == (1, None, 1)
    assert spec.autoscale.enabled is False
    assert spec.wire()["lrScaling"] == {"policy": "linear"}


def test_condition_transition_time_moves_only_on_flip() -> None:
    from datetime import UTC, datetime

    t0, t1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    first = set_condition([], Condition(type="Ready", status="True"), now=t0)
    same = set_condition(first, Condition(type="Ready", status="True", reason="X"), now=t1)
    flipped = set_condition(same, Condition(type="Ready", status="False"), now=t1)
    assert same[0].lastTransitionTime == first[0].lastTransitionTime == "2026-01-01T00:00:00Z"
    assert same[0].reason == "X"
    assert flipped[0].lastTransitionTime == "2026-01-02T00:00:00Z"
    assert len(flipped) == 1
