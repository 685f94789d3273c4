"""Launcher flags and env for a secured etcd: a Secret's directory, explicit flags, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.cli import ConfigError, parse_config
from launcher.contract import PodEnv

BASE = ["--rdzv-endpoint", "e:2379", "--rdzv-id", "j", "train.py"]


def secret_dir(tmp_path: Path, **files: str) -> Path:
    where = tmp_path / "secret"
    where.mkdir()
    for name, text in files.items():
        (where / name.replace("_", ".")).write_text(text)
    return where


def test_a_mounted_secret_gives_user_password_and_ca(tmp_path: Path) -> None:
    where = secret_dir(tmp_path, username="u\n", password="s3cr3t\n", ca_crt="PEM")
    env = {PodEnv.RDZV_CREDENTIALS_DIR: str(where), PodEnv.RDZV_SECRET: "Secret ns/j-r"}
    security = parse_config(BASE, env).security
    assert (security.user, security.password) == ("u", "s3cr3t")
    assert security.ca_file == str(where / "ca.crt") and security.tls
    assert (security.cert_file, security.key_file) == (None, None)
    assert security.hint == "Secret ns/j-r"
    assert "s3cr3t" not in repr(security) + security.describe()  # never in logs


def test_without_ca_crt_the_secret_means_auth_without_tls(tmp_path: Path) -> None:
    where = secret_dir(tmp_path, username="u", password="p")
    security = parse_config(BASE, {PodEnv.RDZV_CREDENTIALS_DIR: str(where)}).security
    assert security.user == "u" and not security.tls


def test_explicit_flags_win_over_the_directory(tmp_path: Path) -> None:
    where = secret_dir(tmp_path, username="u", password="p")
    other = tmp_path / "pw"
    other.write_text("q")
    security = parse_config(["--rdzv-credentials-dir", str(where), "--rdzv-user", "v",
                             "--rdzv-password-file", str(other), *BASE], {}).security
    assert (security.user, security.password) == ("v", "q")


@pytest.mark.parametrize(("flags", "message"), [
    (["--rdzv-credentials-dir", "/nonexistent"], "is not a directory (is Secret ns/j-r mounted"),
    (["--rdzv-user", "u"], "both a user and a password"),
    (["--rdzv-cert-file", __file__], "both a certificate and its key"),
    (["--rdzv-ca-file", "/nonexistent/ca.crt"], "does not exist (from Secret ns/j-r)"),
])
def test_bad_settings_name_the_flag_and_the_secret(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config([*flags, *BASE], {PodEnv.RDZV_SECRET: "Secret ns/j-r"})
    assert message in str(info.value)


def test_an_empty_password_names_the_key_to_fix(tmp_path: Path) -> None:
    where = secret_dir(tmp_path, username="u", password="\n")
    with pytest.raises(ConfigError, match="key 'password' of Secret ns/j-r"):
        parse_config(BASE, {PodEnv.RDZV_CREDENTIALS_DIR: str(where),
                            PodEnv.RDZV_SECRET: "Secret ns/j-r"})


def test_node_ids_start_with_the_pods_hostname() -> None:
    config = parse_config(BASE, {"HOSTNAME": "job-worker-3"})
    assert config.node_id.startswith("job-worker-3-")
