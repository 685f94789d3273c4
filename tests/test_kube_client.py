"""The product's Kubernetes client (:mod:`elastic_operator.kube_client`) against the emulator
over HTTP(S): both logins, the error type callers branch on, retries of an overloaded server,
and the one Event writer."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from elastic_operator import kube_client
from elastic_operator.kube_client import ApiException, Kube, Retry
from elastic_operator.operator import connection_info
from kube_emulator.apiserver.server import ApiServer
from tests.security.etcd_cluster import Pki, make_pki

NS = "default"


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": "x"}]}}


@pytest.fixture
async def server() -> AsyncIterator[ApiServer]:
    api = ApiServer(pods_graceful=False)
    await api.start()
    yield api
    await api.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[ApiServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    api = ApiServer(pods_graceful=False, ssl_context=context)
    await api.start()
    yield api
    await api.stop()


def service_account(directory: Path, token: str, ca: str) -> Path:
    """A pod's service-account mount as the kubelet lays it out."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(Path(ca).read_bytes())
    return directory


def users(server: ApiServer, verb: str) -> list[str]:
    return [r.user for r in server.audit if r.verb == verb]


async def test_kubeconfig_login_from_the_flag_or_kubeconfig_env(
    server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_pod = tmp_path / "no-service-account"
    flag = server.write_kubeconfig(tmp_path / "flag.kubeconfig", user="by-flag")
    async with await Kube.login(flag, service_account=no_pod) as kube:
        created = await kube.call(kube.core.create_namespaced_pod, NS, pod("a"))
    assert created["metadata"]["name"] == "a" and isinstance(created, dict)
    monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "env.kubeconfig",
                                                                  user="by-env")))
    async with await Kube.login(service_account=no_pod) as kube:
        listing = await kube.request("GET", kube_client.path("pods", NS))
    assert [p["metadata"]["name"] for p in listing["items"]] == ["a"]
    assert users(server, "create") == ["by-flag"] and users(server, "list") == ["by-env"]
    # $KUBECONFIG wins over a mounted service account, as for kubectl (kopf's login agrees).
    account = service_account(tmp_path / "sa", "unused", __file__)
    async with await Kube.login(service_account=account) as kube:
        assert kube.server == server.url
    assert (await connection_info(None, service_account=account)).server == server.url


async def test_a_missing_kubeconfig_names_the_fix(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(kube_client.ConfigException, match="--kubeconfig or set KUBECONFIG"):
        await kube_client.configuration(tmp_path / "absent",
                                        service_account=tmp_path / "no-service-account")


async def test_in_cluster_login_over_tls_with_the_service_account(
    tls_server: ApiServer, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(tls_server.port))
    account = service_account(tmp_path / "sa", tls_server.add_user("system:sa"), pki.ca)
    async with await Kube.login(service_account=account) as kube:
        assert kube.server == f"https://127.0.0.1:{tls_server.port}"
        await kube.call(kube.core.create_namespaced_pod, NS, pod("in-cluster"))
    assert users(tls_server, "create") == ["system:sa"]
    # kopf's watches get the same credentials from the same login.
    info = await connection_info(None, service_account=account)
    assert (info.server, info.scheme, info.ca_path) == (kube.server, "Bearer",
                                                        str(account / "ca.crt"))
    assert info.token == (account / "token").read_text()


async def test_in_cluster_login_refuses_a_server_its_ca_did_not_sign(
    tls_server: ApiServer, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(tls_server.port))
    account = service_account(tmp_path / "sa", tls_server.add_user("system:sa"), pki.other_ca)
    async with await Kube.login(service_account=account, retry=Retry(attempts=1)) as kube:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await kube.call(kube.core.list_namespaced_pod, NS)
    assert tls_server.audit == []


async def test_server_errors_reach_the_caller_as_api_exceptions(
    server: ApiServer, tmp_path: Path,
) -> None:
    async with await Kube.login(server.write_kubeconfig(tmp_path / "k")) as kube:
        await kube.call(kube.core.create_namespaced_pod, NS, pod("twice"))
        with pytest.raises(ApiException) as exists:
            await kube.call(kube.core.create_namespaced_pod, NS, pod("twice"))
        with pytest.raises(ApiException) as invalid:
            await kube.call(kube.core.create_namespaced_pod, NS, pod("Not_A_Name"))
        with pytest.raises(ApiException) as missing:
            await kube.request("DELETE", kube_client.path("pods", NS, "nobody"))
    assert (exists.value.status, exists.value.reason) == (409, "Conflict")
    assert kube_client.reason(exists.value) == "AlreadyExists"
    assert kube_client.is_status(exists.value, 409, "AlreadyExists")
    assert not kube_client.is_status(exists.value, 409, "Conflict")
    assert kube_client.status_message(exists.value) == 'pods "twice" already exists'
    assert kube_client.describe(exists.value) == (
        'HTTP 409 AlreadyExists: pods "twice" already exists')
    assert (invalid.value.status, kube_client.reason(invalid.value)) == (422, "Invalid")
    assert "Not_A_Name" in kube_client.status_message(invalid.value)
    assert kube_client.is_status(missing.value, 404, "NotFound")


@pytest.mark.parametrize("code", [429, 503])
async def test_an_overloaded_server_is_retried_until_it_answers(
    server: ApiServer, tmp_path: Path, code: int,
) -> None:
    fast = Retry(attempts=3, cap_seconds=0.05)  # Retry-After 1 s, capped for the test
    async with await Kube.login(server.write_kubeconfig(tmp_path / "k"), retry=fast) as kube:
        server.refuse(2, code)
        created = await kube.call(kube.core.create_namespaced_pod, NS, pod("patient"))
        assert created["metadata"]["name"] == "patient"
        server.refuse(3, code)
        with pytest.raises(ApiException) as gave_up:
            await kube.call(kube.core.read_namespaced_pod, "patient", NS)
    assert gave_up.value.status == code
    assert kube_client.reason(gave_up.value) == {429: "TooManyRequests",
                                                 503: "ServiceUnavailable"}[code]
    assert [r.verb for r in server.audit] == ["create"]  # refusals store nothing


async def test_the_retry_policy_waits_as_the_server_asks_and_only_for_transient_errors(
    server: ApiServer, tmp_path: Path,
) -> None:
    async with await Kube.login(server.write_kubeconfig(tmp_path / "k"),
                                retry=Retry(attempts=1)) as kube:
        server.refuse(1, 429, retry_after=3)
        with pytest.raises(ApiException) as throttled:
            await kube.call(kube.core.list_namespaced_pod, NS)
        with pytest.raises(ApiException) as missing:
            await kube.call(kube.core.read_namespaced_pod, "nobody", NS)
    policy = Retry(attempts=3)
    assert throttled.value.headers["Retry-After"] == "3"
    assert policy.delay(0, throttled.value) == 3.0
    assert policy.delay(2, throttled.value) is None  # the last attempt
    assert policy.delay(0, missing.value) is None  # a 404 is an answer, not a hiccup
    assert 0.1 <= policy.delay(1, aiohttp.ServerDisconnectedError()) <= 0.4
    assert policy.delay(0, ValueError("a bug")) is None
    assert policy.delay(0, TimeoutError()) is None  # maybe overloaded: the caller backs off
    assert policy.delay(0, aiohttp.ClientSSLError(None, OSError())) is None  # type: ignore[arg-type]


async def test_post_event_records_one_event_and_never_raises(
    server: ApiServer, tmp_path: Path,
) -> None:
    job = {"apiVersion": "elastic.dev/v1alpha1", "kind": "ElasticJob",
           "metadata": {"name": "train", "namespace": NS, "uid": "u1"}}
    async with await Kube.login(server.write_kubeconfig(tmp_path / "k"),
                                retry=Retry(attempts=1)) as kube:
        await kube_client.post_event(kube, job, "Scaled", "x" * 2000, component="test",
                                     warning=True)
        server.refuse(1, 503)
        await kube_client.post_event(kube, job, "Lost", "refused", component="test")
    (event,) = server.objects("v1", "events", NS)
    assert event["involvedObject"] == {"apiVersion": "elastic.dev/v1alpha1",
                                       "kind": "ElasticJob", "name": "train",
                                       "namespace": NS, "uid": "u1"}
    assert (event["type"], event["reason"], len(event["message"])) == ("Warning", "Scaled", 1024)
    assert event["source"] == {"component": "test"}


def test_paths() -> None:
    assert kube_client.path("pods", "ns", "p", "status") == "/api/v1/namespaces/ns/pods/p/status"
    assert kube_client.path("elasticjobs", "ns", group="elastic.dev", version="v1alpha1") == (
        "/apis/elastic.dev/v1alpha1/namespaces/ns/elasticjobs")
