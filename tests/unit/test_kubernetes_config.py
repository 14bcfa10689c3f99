"""init("kubernetes") and the KubernetesCluster block, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import juliarun
from juliarun.errors import ConfigError


def test_init_without_a_kubeconfig_says_how_to_configure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JULIARUN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JULIARUN_KUBECONFIG", str(tmp_path / "missing.kubeconfig"))
    with pytest.raises(ConfigError) as err:
        juliarun.init("kubernetes")
    assert "no kubeconfig at" in str(err.value)
    assert "JULIARUN_KUBECONFIG" in (err.value.hint or "")


def test_kubernetes_settings_have_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    from juliarun.settings import load_settings

    monkeypatch.setenv("JULIARUN_KUBE_QPS", "0")
    with pytest.raises(ConfigError, match="JULIARUN_KUBE_QPS"):
        load_settings()
    monkeypatch.setenv("JULIARUN_KUBE_QPS", "20")
    monkeypatch.setenv("JULIARUN_KUBE_NAMESPACE", "Not_A_Label")
    with pytest.raises(ConfigError, match="JULIARUN_KUBE_NAMESPACE"):
        load_settings()


def test_block_keeps_the_kubeconfig_secret(tmp_path: Path) -> None:
    from juliarun.blocks import KubernetesCluster

    path = tmp_path / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "s3cr3t-token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(config))
    block = KubernetesCluster.from_kubeconfig(path, namespace="team-a")
    assert "s3cr3t-token" not in repr(block)
    assert "s3cr3t-token" not in block.model_dump_json()
    assert block.kubeconfig.get_secret_value()["users"][0]["user"]["token"] == "s3cr3t-token"
    with pytest.raises(ConfigError):
        KubernetesCluster.from_kubeconfig(tmp_path / "nope")
