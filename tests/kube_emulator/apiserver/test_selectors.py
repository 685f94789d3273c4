"""Label and field selectors: parsing, Kubernetes semantics, and their use over HTTP."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_emulator.apiserver.selectors import (
    FieldSelector,
    LabelSelector,
    Requirement,
    SelectorError,
)
from tests.kube_emulator.apiserver.conftest import PODS, Client, pod

LABELS = {"app": "web", "tier": "front", "elastic.dev/job-name": "j1"}


@pytest.mark.parametrize(("selector", "expected"), [
    ("", True),
    ("app=web", True),
    ("app==web", True),
    ("app=db", False),
    ("app!=db", True),
    ("missing!=x", True),  # != matches objects without the label
    ("app in (web,db)", True),
    ("app in (db)", False),
    ("app notin (db, cache)", True),
    ("missing notin (x)", True),
    ("app", True),
    ("missing", False),
    ("!missing", True),
    ("!app", False),
    ("app=web,tier=front", True),
    ("app=web,tier=back", False),
    ("elastic.dev/job-name=j1", True),
    ("app in (web), !missing, tier", True),
])
def test_label_selector_semantics(selector: str, expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(LABELS) is expected


@pytest.mark.parametrize("selector", [
    "app=", "=web", "app in web", "app in ()", "a b", "app=(x)", "app in (a", "-bad=x", ",",
    "app=web,", "app=we b", "x=" + "a" * 64,
])
def test_invalid_label_selectors_raise(selector: str) -> None:
    if selector == "app=":
        assert LabelSelector.parse(selector).matches({"app": ""})  # empty value is legal
        return
    with pytest.raises(SelectorError):
        LabelSelector.parse(selector)


def test_field_selector_semantics_and_unknown_fields() -> None:
    obj = {"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"},
           "status": {"phase": "Running"}}
    allowed = ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase")
    assert FieldSelector.parse("spec.nodeName=n1,status.phase!=Failed", allowed).matches(obj)
    assert not FieldSelector.parse("spec.nodeName==n2", allowed).matches(obj)
    assert FieldSelector.parse("spec.nodeName!=", allowed).matches(obj)
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.other"):
        FieldSelector.parse("spec.other=x", allowed)
    with pytest.raises(SelectorError):
        FieldSelector.parse("nonsense", allowed)


async def test_list_filters_by_labels_over_http(api: Client) -> None:
    await api.ok("POST", PODS, pod("a", {"job": "j1", "idx": "0"}))
    await api.ok("POST", PODS, pod("b", {"job": "j1", "idx": "1"}))
    await api.ok("POST", PODS, pod("c", {"job": "j2"}))

    async def names(selector: str) -> list[str]:
        result = await api.ok("GET", f"{PODS}?labelSelector={quote(selector)}")
        return [p["metadata"]["name"] for p in result["items"]]

    assert await names("job=j1") == ["a", "b"]
    assert await names("job=j2") == ["c"]
    assert await names("job in (j1,j2),idx notin (1)") == ["a", "c"]
    assert await names("!idx") == ["c"]
    status, body = await api.get(f"{PODS}?labelSelector={quote('job in j1')}")
    assert (status, body["reason"]) == (400, "BadRequest")


async def test_pod_field_selectors_over_http(api: Client) -> None:
    await api.ok("POST", PODS, pod("a", nodeName="n1"))
    await api.ok("POST", PODS, pod("b"))
    result = await api.ok("GET", f"{PODS}?fieldSelector={quote('spec.nodeName=n1')}")
    assert [p["metadata"]["name"] for p in result["items"]] == ["a"]
    result = await api.ok("GET", f"/api/v1/pods?fieldSelector={quote('spec.nodeName=')}")
    assert [p["metadata"]["name"] for p in result["items"]] == ["b"]
    query = quote("status.phase=Pending,metadata.namespace=default")
    result = await api.ok("GET", f"{PODS}?fieldSelector={query}")
    assert len(result["items"]) == 2
    status, body = await api.get(f"/api/v1/namespaces?fieldSelector={quote('spec.nodeName=x')}")
    assert status == 400 and "field label not supported" in body["message"]


_words = st.sampled_from(["a", "b", "c", "web", "x-1", "z.y"])


@st.composite
def _requirements(draw: st.DrawFn) -> Requirement:
    op = draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!"]))
    key = draw(_words)
    if op in ("exists", "!"):
        return Requirement(key, op, frozenset())
    if op in ("=", "!="):
        return Requirement(key, op, frozenset({draw(_words)}))
    return Requirement(key, op, frozenset(draw(st.sets(_words, min_size=1, max_size=3))))


@given(st.lists(_requirements(), max_size=4),
       st.dictionaries(_words, _words, max_size=4))
def test_printed_selector_parses_back_to_the_same_meaning(
        requirements: list[Requirement], labels: dict[str, str]) -> None:
    selector = LabelSelector(requirements)
    assert LabelSelector.parse(str(selector)).matches(labels) == selector.matches(labels)
    assert selector.matches(labels) == all(r.matches(labels) for r in requirements)
