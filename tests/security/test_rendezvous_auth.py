"""The pure half of per-job etcd users: names, key ranges, and what a sweep removes."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elastic_operator.job.etcd_auth import (
    job_user,
    parse_job_user,
    prefix_range,
    stale_users,
)
from launcher.contract import etcd_prefix

# What Kubernetes allows in a namespace, and what workers.rdzv_id makes of a job.
names = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=40)


@given(names, names)
def test_job_user_round_trips(namespace: str, rdzv: str) -> None:
    assert parse_job_user(job_user(namespace, rdzv)) == (namespace, rdzv)


@pytest.mark.parametrize("user", ["root", "elastic-job/", "elastic-job/ns", "elastic-job//x",
                                  "elastic-job/ns/", "elastic-job/ns/a/b", "someone-else"])
def test_users_we_did_not_make_are_not_ours(user: str) -> None:
    assert parse_job_user(user) is None


@given(names, st.text(min_size=0, max_size=20))
def test_prefix_range_covers_exactly_the_prefix(rdzv: str, suffix: str) -> None:
    key, end = prefix_range(etcd_prefix(rdzv))
    inside = (etcd_prefix(rdzv) + suffix).encode()
    assert key <= inside < end
    # A job whose id extends this one's (a-1 vs a-10) is outside: the prefix ends in "/".
    assert not key <= etcd_prefix(rdzv + "0").encode() < end
    assert not key <= etcd_prefix(rdzv)[:-1].encode() < end


@given(st.lists(st.tuples(names, names), max_size=8), st.lists(st.tuples(names, names),
                                                               max_size=8))
def test_sweep_removes_exactly_the_users_of_gone_jobs(live: list[tuple[str, str]],
                                                      gone: list[tuple[str, str]]) -> None:
    users = [job_user(*j) for j in live + gone] + ["root", "alice"]
    stale = stale_users(users, live)
    assert set(stale) == {job_user(*j) for j in gone if j not in live}


def test_a_namespaced_operator_sweeps_only_its_namespaces() -> None:
    users = [job_user("a", "a-x-1"), job_user("b", "b-y-2"), job_user("a", "a-z-3")]
    assert stale_users(users, [("a", "a-x-1")], namespaces=["a"]) == [job_user("a", "a-z-3")]
