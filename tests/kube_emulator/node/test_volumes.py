"""Volumes as directories: which directory a mount is, and how paths under it are mapped."""

from __future__ import annotations

from pathlib import Path

import pytest

from kube_emulator.node.runtime import ContainerConfigError, VolumeMap, container_volumes


def _map(tmp_path: Path) -> VolumeMap:
    return VolumeMap(((("/shared/ckpt"), tmp_path / "c"), ("/shared", tmp_path / "s")))


@pytest.mark.parametrize(("value", "expected"), [
    ("/shared", "{s}"),
    ("/shared/x/y.jsonl", "{s}/x/y.jsonl"),
    ("/shared/ckpt/7", "{c}/7"),  # the nested, longer mount wins
    ("--log-indices=/shared/i.jsonl", "--log-indices={s}/i.jsonl"),
    ("/sharedx/a", "/sharedx/a"),  # only a whole path component matches
    ("shared/a", "shared/a"),
    ("--name=value", "--name=value"),
    ("echo /shared/a", "echo /shared/a"),  # inside a shell string: not a path argument
])
def test_arguments_under_a_mount_are_mapped(tmp_path: Path, value: str, expected: str) -> None:
    assert _map(tmp_path).arg(value) == expected.format(s=tmp_path / "s", c=tmp_path / "c")


def test_only_declared_env_values_are_mapped(tmp_path: Path) -> None:
    env = {"CKPT": "/shared/ckpt", "HOME": "/shared/home", "OTHER": "/elsewhere"}
    container = {"name": "w", "env": [{"name": "CKPT", "value": "/shared/ckpt"},
                                      {"name": "OTHER", "value": "/elsewhere"}]}
    assert _map(tmp_path).env(env, container) == {
        "CKPT": str(tmp_path / "c"), "HOME": "/shared/home", "OTHER": "/elsewhere"}


def test_volume_kinds_become_directories(tmp_path: Path) -> None:
    host = tmp_path / "host"
    pod = {"metadata": {"name": "p", "namespace": "team"}, "spec": {"volumes": [
        {"name": "claim", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "host", "hostPath": {"path": str(host)}},
        {"name": "creds", "secret": {"secretName": "s"}}]}}
    container = {"name": "w", "volumeMounts": [
        {"name": "claim", "mountPath": "/data/"},
        {"name": "claim", "mountPath": "/logs", "subPath": "logs"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "host", "mountPath": "/mnt/host"},
        {"name": "host", "mountPath": str(host)},  # the same path: nothing to map
        {"name": "creds", "mountPath": "/etc/creds"}]}
    mapped = container_volumes(pod, container, tmp_path / "claims", tmp_path / "pod")
    assert dict(mapped.mounts) == {
        "/data": tmp_path / "claims" / "team" / "data",
        "/logs": tmp_path / "claims" / "team" / "data" / "logs",
        "/scratch": tmp_path / "pod" / "volumes" / "scratch",
        "/mnt/host": host}
    assert all(directory.is_dir() for _, directory in mapped.mounts)


def test_a_mount_of_no_volume_is_named(tmp_path: Path) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"volumes": []}}
    container = {"name": "w", "volumeMounts": [{"name": "gone", "mountPath": "/x"}]}
    with pytest.raises(ContainerConfigError, match="'gone' is not a volume of the pod"):
        container_volumes(pod, container, tmp_path, tmp_path)
