"""Issue 4's end-to-end line on the real Kubernetes node: run_pipeline builds a bundle of a local
Julia package (a builder Job on the node), an image FROM the julia image (pushed to the test
registry, pulled by the node's containerd), and runs a JuliaBatch with host + ramdisk + git
storage that prints hello world! from real Julia — as test_pipeline does on Docker. The git
storage is served over the network (a real git daemon) and cloned by the pod's init container."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

import juliarun
from juliarun.backends.kubernetes import KubernetesBackend
from juliarun.backends.kubernetes.manifests import BUNDLE_VOLUME
from juliarun.flows import run_pipeline
from juliarun.specs import StorageSpec
from tests.integration.fixtures.kubernetes import GitServer, kubeconfig_path
from tests.integration.git_repos import make_repo
from tests.integration.pipeline_specs import expected_lines, pipeline_specs

pytestmark = [
    pytest.mark.prefect_server,
    pytest.mark.docker,
    pytest.mark.kubernetes,
    pytest.mark.julia,
]


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url


@pytest.mark.parametrize("bake_bundle", [False, True], ids=["mounted-bundle", "baked-bundle"])
def test_the_pipeline_prints_hello_world_on_the_real_node(
    bake_bundle: bool,
    prefect_api: str,
    juliarun_home: Path,
    tmp_path: Path,
    julia_image: str,
    kube_julia_image: str,
    kube_git_image: str,
    git_server: GitServer,
    kube_namespace: str,
    registry: str,
    docker_labels: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JULIARUN_KUBECONFIG", str(kubeconfig_path()))
    monkeypatch.setenv("JULIARUN_KUBE_NAMESPACE", kube_namespace)
    monkeypatch.setenv("JULIARUN_JULIA_IMAGE", kube_julia_image)
    monkeypatch.setenv("JULIARUN_POLL_INTERVAL", "0.5")
    monkeypatch.setenv("JULIARUN_DOCKER_LABELS", json.dumps(docker_labels))
    specs = pipeline_specs(tmp_path, julia_image, "juliarun/test-k8s-pipeline", docker_labels)
    make_repo(git_server.root / "origin")
    served = StorageSpec(name="repo", kind="git", url=f"{git_server.url}origin")
    specs.storage = [served if s.name == "repo" else s for s in specs.storage]
    job = specs.job
    first = run_pipeline(
        job,
        return_state=True,
        **specs.kwargs(),
        cluster="kubernetes",
        registry=registry,
        timeout=300,
        bake_bundle=bake_bundle,
    )
    assert first.is_completed(), first.message
    assert first.result()["status"] == "succeeded"
    ctx = juliarun.init("kubernetes")
    try:
        backend = ctx.backend
        assert isinstance(backend, KubernetesBackend)
        pod = backend.client.get(backend.routes.jobs_path(job.name))["spec"]["template"]["spec"]
        assert [c["image"] for c in pod["initContainers"]] == [kube_git_image]
        pod_image = pod["containers"][0]["image"]
        assert pod_image.startswith(f"{registry}/juliarun/test-k8s-pipeline:")
        # Baked, the bundle travels in the image (no node path: any node runs it); mounted,
        # it is the address on the node, read-only.
        mounted = [v for v in pod["volumes"] if v["name"] == BUNDLE_VOLUME]
        env = {e["name"] for e in pod["containers"][0]["env"]}
        assert (len(mounted), "JULIA_DEPOT_PATH" in env) == (
            (0, False) if bake_bundle else (1, True)
        )
        lines = [line.message for line in backend.logs(job.name)]
        assert lines == expected_lines("kubernetes")
        juliarun.delete(ctx, job.name)
    finally:
        ctx.close()
