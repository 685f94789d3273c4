"""Per-job isolation on a shared etcd with TLS and auth on (real etcd 3.4, issue 14).

A member of job B, holding B's credentials, is refused everything under job A's prefix, and
nothing of A changes; an agent with wrong or missing credentials exits at once with a reason
that names the Secret to fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from etcd3 import transactions as tx

from launcher import contract
from launcher.etcd_client import EtcdAuthError, EtcdSecurity, auth_problem, make_client
from launcher.etcd_session import EtcdSession
from tests.launcher.conftest import REPO, LauncherCluster, wait_for
from tests.security.conftest import SecureEtcd, write_password


def refused(call: Any) -> str:
    """The refusal etcd gave ``call`` (fails the test if it was allowed)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    problem = auth_problem(info.value)
    assert problem is not None, info.value
    return problem


def test_a_member_of_b_cannot_touch_job_a(secure_etcd: SecureEtcd) -> None:
    a, b = secure_etcd.job("team-a", "a-0001"), secure_etcd.job("team-b", "b-0001")
    prefix_a = contract.etcd_prefix("a-0001")
    session_a = EtcdSession(secure_etcd.endpoints, prefix_a, name="a", security=a).start(30)
    client_b = make_client(secure_etcd.endpoints, 5.0, b)
    try:
        round_key = contract.round_key("a-0001")
        session_a.put(round_key, b'{"generation": 1, "members": ["a0"]}')
        session_a.put_owned(f"{prefix_a}nodes/a0", b'{"addr": "x", "port": 1, "after": 0}')
        wait_for(lambda: len(session_a.view()[1]) == 2, 10, "A's watch sees its two keys")
        before = {k: (e.value, e.mod_revision) for k, e in session_a.view()[1].items()}

        seen: list[Any] = []
        client_b.add_watch_prefix_callback(prefix_a, seen.append)
        problems = {
            "get": refused(lambda: client_b.get(round_key)),
            "get_prefix": refused(lambda: list(client_b.get_prefix(prefix_a))),
            "list_all": refused(lambda: list(client_b.get_prefix("/elastic/"))),
            "put": refused(lambda: client_b.put(round_key, b"forged")),
            "delete": refused(lambda: client_b.delete(round_key)),
            "delete_prefix": refused(lambda: client_b.delete_prefix(prefix_a)),
            "close": refused(lambda: client_b.put(contract.completion_key("a-0001"), b"{}")),
            "report": refused(lambda: client_b.put(contract.failure_key("a-0001", "a0"), b"x")),
            "txn": refused(lambda: client_b.transaction(
                compare=[tx.Version(round_key) > 0], success=[tx.Delete(round_key)],
                failure=[])),
        }
        assert all("permission denied" in p for p in problems.values()), problems
        # A keeps working; B's watch on A's prefix never sees A's writes.
        session_a.put(round_key, b'{"generation": 2, "members": ["a0"]}')
        time.sleep(1.0)
        assert not [r for r in seen if not isinstance(r, BaseException) and r.events]
        wait_for(lambda: session_a.view()[1][round_key].value ==
                 b'{"generation": 2, "members": ["a0"]}', 10, "A's own write")
        after = {k: e.value for k, e in session_a.view()[1].items()}
        assert set(after) == set(before)
        # A session of B pointed at A's prefix fails at once, with the reason.
        with pytest.raises(EtcdAuthError, match="permission denied"):
            EtcdSession(secure_etcd.endpoints, prefix_a, name="b", security=b).start(10)
        # B's own prefix is B's: allowed.
        client_b.put(contract.round_key("b-0001"), b"{}")
    finally:
        client_b.close()
        session_a.close()


def test_removing_a_job_removes_its_access(secure_etcd: SecureEtcd) -> None:
    from elastic_operator.job.etcd_auth import job_user

    creds = secure_etcd.job("team-c", "c-0001")
    make_client(secure_etcd.endpoints, 5.0, creds).close()
    secure_etcd.admin.remove(job_user("team-c", "c-0001"))
    secure_etcd.admin.remove(job_user("team-c", "c-0001"))  # idempotent
    assert job_user("team-c", "c-0001") not in secure_etcd.admin.users()
    with pytest.raises(EtcdAuthError, match="invalid user ID or password"):
        make_client(secure_etcd.endpoints, 5.0, creds)


def run_agent(secure_etcd: SecureEtcd, tmp_path: Path, *flags: str,
              secret: str = "Secret team-a/job-a-rendezvous") -> tuple[int, str, str]:
    """An agent (``python -m launcher``) with ``flags``; (exit code, termination log, stderr)."""
    term = tmp_path / "termination.log"
    cmd = [sys.executable, "-m", "launcher", "--rdzv-endpoint", secure_etcd.endpoints,
           "--rdzv-id", "a-0002", "--node-id", "n0", "--local-addr", "127.0.0.1",
           "--no-prewarm", "--termination-log", str(term),
           "--rdzv-conf", "join_timeout=20", *flags, str(REPO / "tests/launcher/train_tiny.py"),
           "--out", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(REPO), GRPC_VERBOSITY="NONE",
               **{contract.PodEnv.RDZV_SECRET: secret})
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    text = term.read_text() if term.exists() else ""
    return done.returncode, text, done.stderr


def test_wrong_or_missing_credentials_stop_the_agent_with_a_reason(
        secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    good = secure_etcd.job("team-a", "a-0002")
    assert good.user and good.ca_file
    ca = ("--rdzv-ca-file", good.ca_file)

    started = time.monotonic()
    code, text, _ = run_agent(secure_etcd, tmp_path, *ca, "--rdzv-user", good.user,
                              "--rdzv-password-file", str(write_password(tmp_path, "wrong")))
    assert code == 1
    report = contract.FailureReport.from_json(text)
    assert report.reason == "RendezvousFailed"
    assert "invalid user ID or password" in report.message
    assert "Secret team-a/job-a-rendezvous" in report.message  # which Secret to fix
    assert time.monotonic() - started < 15, "a refusal must not be retried until the timeout"

    code, text, _ = run_agent(secure_etcd, tmp_path, *ca)  # auth is on, no user given
    assert code == 1
    report = contract.FailureReport.from_json(text)
    assert report.reason == "RendezvousFailed" and "user name is empty" in report.message

    code, _, err = run_agent(secure_etcd, tmp_path, *ca, "--rdzv-user", good.user,
                             "--rdzv-password-file", str(tmp_path / "missing"))
    assert code == 2
    assert "--rdzv-password-file" in err and "Secret team-a/job-a-rendezvous" in err


@pytest.mark.slow
def test_job_a_trains_on_while_b_is_refused(secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    creds = {"a": secure_etcd.job("team-a", "a-0003"), "b": secure_etcd.job("team-b", "b-0003")}

    def flags(who: str) -> tuple[str, ...]:
        sec: EtcdSecurity = creds[who]
        assert sec.ca_file and sec.user and sec.password
        return ("--rdzv-ca-file", sec.ca_file, "--rdzv-user", sec.user, "--rdzv-password-file",
                str(write_password(tmp_path / who, sec.password)))

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    etcd = SimpleNamespace(endpoint=secure_etcd.endpoints)
    job_a = LauncherCluster(etcd, tmp_path / "job-a", "a-0003")  # type: ignore[arg-type]
    job_b = LauncherCluster(etcd, tmp_path / "job-b", "b-0003")  # type: ignore[arg-type]
    try:
        for node in ("a0", "a1"):
            job_a.start(node, "2:2", launcher_args=flags("a"))
        job_b.start("b0", "1:1", launcher_args=flags("b"))
        gen, _, step = job_a.wait_training(2, 120, steps=5)
        job_b.wait_training(1, 120, steps=3)
        # B's credentials against A's round: refused, A's round unchanged, A keeps stepping.
        attacker = make_client(secure_etcd.endpoints, 5.0, creds["b"])
        forged = json.dumps({"generation": gen + 1, "members": ["b0"], "master_addr": "evil",
                             "master_port": 1}).encode()
        refused(lambda: attacker.put(contract.round_key("a-0003"), forged))
        refused(lambda: attacker.delete(f"{contract.etcd_prefix('a-0003')}nodes/a0"))
        attacker.close()
        job_a.wait_training(2, 60, steps=step + 10)
        assert {g for g, _, _ in job_a.progress()} == {gen}, "A must not have re-formed"
    finally:
        job_a.stop_all()
        job_b.stop_all()


def test_security_settings_say_what_they_are_and_what_is_wrong() -> None:
    assert "plain HTTP" in EtcdSecurity().describe()
    assert "TLS" in EtcdSecurity(ca_file=__file__).describe()
    with pytest.raises(ValueError, match="--rdzv-key"):
        EtcdSecurity(ca_file=__file__, cert_file=__file__)
    with pytest.raises(ValueError, match=r"does not exist.*Secret ns/x"):
        EtcdSecurity(ca_file="/nonexistent/ca.crt", hint="Secret ns/x")


def test_torchrun_backend_takes_the_same_credentials(secure_etcd: SecureEtcd,
                                                     tmp_path: Path) -> None:
    from torch.distributed.elastic.rendezvous import RendezvousParameters

    from launcher.torch_rendezvous import create_handler

    creds = secure_etcd.job("team-t", "t-0001")
    assert creds.user and creds.password and creds.ca_file
    where = tmp_path / "secret"
    where.mkdir()
    (where / "username").write_text(creds.user)
    (where / "password").write_text(creds.password)
    (where / "ca.crt").write_bytes(Path(creds.ca_file).read_bytes())
    params = RendezvousParameters("etcd-v3", secure_etcd.endpoints, "t-0001", 1, 1,
                                  credentials_dir=str(where), node_id="t0")
    handler = create_handler(params)
    try:
        assert handler.get_run_id() == "t-0001" and handler.num_nodes_waiting() == 0
    finally:
        handler.shutdown()
    wrong = RendezvousParameters("etcd-v3", secure_etcd.endpoints, "a-0001", 1, 1,
                                 credentials_dir=str(where), node_id="t1")
    with pytest.raises(EtcdAuthError, match="permission denied"):
        create_handler(wrong)  # t's user on a's prefix
