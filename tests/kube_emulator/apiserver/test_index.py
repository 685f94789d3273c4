"""The store's selector index answers exactly what a full scan answers."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kube_emulator.apiserver.selectors import FieldSelector, LabelSelector
from kube_emulator.apiserver.store import ObjectStore

NAMESPACES = ["default", "a", "b"]
NAMES = [f"p{i}" for i in range(8)]
LABEL_KEYS = ["app", "job", "tier"]
LABEL_VALUES = ["x", "y", "z"]
NODES = ["", "n1", "n2"]
PHASES = ["Pending", "Running", "Failed"]

labels_st = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES),
                            max_size=3)
pod_st = st.fixed_dictionaries({
    "namespace": st.sampled_from(NAMESPACES), "name": st.sampled_from(NAMES),
    "labels": labels_st, "node": st.sampled_from(NODES), "phase": st.sampled_from(PHASES)})
op_st = st.tuples(st.sampled_from(["put", "put", "delete"]), pod_st)


def requirement_st() -> st.SearchStrategy[str]:
    key, value = st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES)
    values = st.lists(value, min_size=1, max_size=2).map(lambda vs: ",".join(sorted(set(vs))))
    return st.one_of(
        st.builds(lambda k, v: f"{k}={v}", key, value),
        st.builds(lambda k, v: f"{k}!={v}", key, value),
        st.builds(lambda k, vs: f"{k} in ({vs})", key, values),
        st.builds(lambda k, vs: f"{k} notin ({vs})", key, values),
        key, key.map(lambda k: f"!{k}"))


label_selector_st = st.lists(requirement_st(), max_size=3).map(",".join)
field_selector_st = st.lists(st.one_of(
    st.builds(lambda n: f"spec.nodeName={n}", st.sampled_from(NODES)),
    st.builds(lambda n: f"spec.nodeName!={n}", st.sampled_from(NODES)),
    st.builds(lambda p: f"status.phase={p}", st.sampled_from(PHASES)),
    st.builds(lambda n: f"metadata.name={n}", st.sampled_from(NAMES)),
), max_size=2).map(",".join)


def full_scan(store: ObjectStore, namespace: str | None, labels: LabelSelector,
              fields: FieldSelector) -> list[tuple[str, str]]:
    objects = store._objects.get(("", "pods"), {})  # the truth the index must agree with
    return sorted(k for k, obj in objects.items()
                  if (namespace is None or k[0] == namespace)
                  and labels.matches(obj["metadata"].get("labels")) and fields.matches(obj))


@settings(max_examples=150, deadline=None)
@given(st.lists(op_st, max_size=40),
       st.lists(st.tuples(st.sampled_from([None, *NAMESPACES]), label_selector_st,
                          field_selector_st), min_size=1, max_size=5))
def test_indexed_list_equals_a_full_scan(ops: list[tuple[str, dict[str, Any]]],
                                        queries: list[tuple[str | None, str, str]]) -> None:
    store = ObjectStore(pods_graceful=False)
    pods = store.registry.resource("", "v1", "pods")
    namespaces = store.registry.resource("", "v1", "namespaces")
    for ns in NAMESPACES[1:]:
        store.create(namespaces, None, {"metadata": {"name": ns}})
    # Queries run between writes too, so field indexes get built mid-history and kept current.
    for step, (kind, pod) in enumerate(ops):
        ns, name = pod["namespace"], pod["name"]
        exists = (ns, name) in store._objects.get(("", "pods"), {})
        body = {"metadata": {"name": name, "labels": pod["labels"]},
                "spec": {"containers": [{"name": "c", "image": "i"}],
                         **({"nodeName": pod["node"]} if pod["node"] else {})},
                "status": {"phase": pod["phase"]}}
        if kind == "put" and not exists:
            store.create(pods, ns, body)
        elif kind == "put":  # as clients change pods: labels, status, a binding
            current = store.get(pods, ns, name)
            current["metadata"]["labels"] = pod["labels"]
            current = store.update(pods, ns, name, current)
            current["status"] = body["status"]
            store.update(pods, ns, name, current, subresource="status")
            if pod["node"] and not current["spec"].get("nodeName"):
                store.bind(pods, ns, name, pod["node"])
        elif exists:
            store.delete(pods, ns, name)
        namespace, label_text, field_text = queries[step % len(queries)]
        labels = LabelSelector.parse(label_text)
        fields = FieldSelector.parse(field_text, pods.selectable_fields())
        items, _ = store.list(pods, namespace, labels, fields)
        got = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items]
        assert got == full_scan(store, namespace, labels, fields), (label_text, field_text)
        assert store.count(pods, namespace, labels) == len(
            full_scan(store, namespace, labels, FieldSelector()))
