"""Issue 4 on the real Kubernetes node: package bundles built by a builder Job and mounted
read-only, pre-warming with a DaemonSet, ``volume`` storage through PersistentVolumeClaims of the
test environment's host-path provisioner (``scripts/testenv up provisioner``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kubernetes import client

from juliarun.api import Context
from juliarun.backends.base import wait_for_job
from juliarun.backends.kubernetes import KubernetesBackend
from juliarun.backends.kubernetes.manifests import NodeTypeRule, Toleration
from juliarun.builders.bundles import build_bundle, prune_bundles
from juliarun.builders.prewarm import prewarm_image
from juliarun.errors import BackendError, SpecError, StorageError
from juliarun.specs import Batch, BundlePackage, BundleSpec, JuliaBatch, StorageSpec
from tests.integration.fixtures.kubernetes import KWOK_ANNOTATION, NodeFactory
from tests.integration.test_bundles import GREETER_UUID, check_compiled, greeter_bundle

pytestmark = pytest.mark.kubernetes

HOSTPATH_CLASS = "juliarun-hostpath"


def backend(ctx: Context) -> KubernetesBackend:
    assert isinstance(ctx.backend, KubernetesBackend)
    return ctx.backend


def greeter_bundle_at(root: Path) -> BundleSpec:
    """The bundle of the Greeter package ``greeter_bundle`` made under ``root``."""
    pkg = BundlePackage(name="Greeter", uuid=GREETER_UUID, path=str(root / "Greeter"))
    return BundleSpec(name="greet", packages=[pkg, "Statistics"])


def output(b: KubernetesBackend, name: str) -> list[str]:
    return [line.message for line in b.logs(name)]


@pytest.mark.julia
def test_a_bundle_built_on_the_node_is_mounted_read_only_and_its_cache_used(
    kube_ctx: Context, juliarun_home: Path, tmp_path: Path
) -> None:
    b = backend(kube_ctx)
    lines: list[str] = []
    built = build_bundle(
        greeter_bundle(tmp_path), b, logs=kube_ctx.logs, on_line=lines.append, timeout=300
    )
    assert built.built and built.root == f"/mnt/jrb-{built.address}"
    assert "juliarun-step: Pkg.precompile()" in lines, lines
    check_compiled(built.path)
    assert built.compiled == ["Greeter"]
    assert not b.jobs(), "the builder Job is removed after the build"

    code = tmp_path / "code"
    code.mkdir()
    (code / "main.jl").write_text(
        "using Greeter, Statistics\nprintln(Greeter.greet())\n"
        'try; touch(joinpath(ENV["JULIA_PROJECT"], "x")); catch; println("read-only"); end\n'
    )
    job = JuliaBatch("greeting", "/mnt/code/main.jl", "code", pkg_bundle="greet")
    b.submit(job, {"code": StorageSpec(name="code", kind="host", path=str(code))})
    status = wait_for_job(b, job.name, timeout=180)
    lines = output(b, job.name)
    assert status.phase == "succeeded", (status, lines)
    # no "Precompiling Greeter" line: the bundle's cache was used at its compiled path
    assert lines == ["hello world! mean=2.0", "read-only"]

    # A changed package is a new address; the old one is pruned once no Job mounts it.
    (tmp_path / "Greeter" / "src" / "Greeter.jl").write_text(
        'module Greeter\nusing Statistics\ngreet() = "hello again!"\nend\n'
    )
    newer = build_bundle(greeter_bundle_at(tmp_path), b, logs=kube_ctx.logs, timeout=300)
    assert newer.address != built.address
    assert b.bundle_paths_in_use() == [str(built.path.resolve())]
    assert prune_bundles(juliarun_home, in_use=b.bundle_paths_in_use()) == []
    b.delete(job.name, force=True)
    assert prune_bundles(juliarun_home, in_use=b.bundle_paths_in_use()) == [built.path]


def test_a_job_with_a_bundle_never_built_is_refused(kube_ctx: Context) -> None:
    with pytest.raises(SpecError, match="package bundle 'nothere' not found"):
        backend(kube_ctx).submit(Batch("b", command=["true"], pkg_bundle="nothere"), {})
    assert not backend(kube_ctx).jobs()


def test_prewarm_pulls_onto_the_real_node_and_names_nodes_that_fail(
    kube_ctx: Context, kube_julia_image: str, kube_real_node: str, kube_namespace: str
) -> None:
    b = backend(kube_ctx)
    b.node_types = {
        "highcpu": NodeTypeRule(labels={"kubernetes.io/hostname": kube_real_node}),
    }
    rows = prewarm_image(b, kube_julia_image, node_type="highcpu", timeout=120)
    assert [(r.node, r.ready) for r in rows] == [(kube_real_node, True)]
    assert kube_julia_image in rows[0].detail
    daemonsets = b.client.get(f"/apis/apps/v1/namespaces/{kube_namespace}/daemonsets")
    assert not daemonsets["items"], "the DaemonSet is removed when done"

    missing = "localhost:5000/juliarun/no-such-image:missing"
    with pytest.raises(BackendError) as err:
        prewarm_image(b, missing, node_type="highcpu", timeout=20)
    assert f"{kube_real_node} (" in err.value.message
    assert "ImagePull" in err.value.message or "ErrImage" in err.value.message
    daemonsets = b.client.get(f"/apis/apps/v1/namespaces/{kube_namespace}/daemonsets")
    assert not daemonsets["items"], "the DaemonSet is removed on timeout too"


def test_prewarm_on_kwok_nodes_reports_each_node_simulated(
    kube_ctx: Context, kwok_nodes: NodeFactory, kube_julia_image: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    names = kwok_nodes(2, labels={"juliarun.io/prewarm-test": tag})
    b = backend(kube_ctx)
    b.node_types = {
        "highmem": NodeTypeRule(
            labels={"juliarun.io/prewarm-test": tag},
            tolerations=[Toleration(key=KWOK_ANNOTATION, value="fake", effect="NoSchedule")],
        )
    }
    rows = prewarm_image(b, kube_julia_image, node_type="highmem", timeout=60)
    assert sorted(r.node for r in rows) == sorted(names)
    # kwok marks pods Ready without pulling anything: the rows say it was simulated
    assert all(r.ready and "simulated" in r.detail for r in rows)
    with pytest.raises(SpecError, match="'gpu' is not in this cluster's node-type map"):
        prewarm_image(b, kube_julia_image, node_type="gpu")


def _storage_classes(kube_api: client.ApiClient) -> list[str]:
    return [c.metadata.name for c in client.StorageV1Api(kube_api).list_storage_class().items]


def test_a_volume_written_by_one_job_is_read_by_the_next(
    kube_ctx: Context, kube_julia_image: str, kube_api: client.ApiClient, kube_namespace: str
) -> None:
    if HOSTPATH_CLASS not in _storage_classes(kube_api):
        pytest.fail(f"no StorageClass {HOSTPATH_CLASS}: run `scripts/testenv up provisioner`")
    b = backend(kube_ctx)
    vol = StorageSpec(name="vol", kind="volume", storage_class=HOSTPATH_CLASS, size="64Mi")
    assert b.provision_storage(vol) == f"pvc:{kube_namespace}/juliarun-vol"
    assert b.provision_storage(vol) == f"pvc:{kube_namespace}/juliarun-vol"  # idempotent
    pvc = client.CoreV1Api(kube_api).read_namespaced_persistent_volume_claim(
        "juliarun-vol", kube_namespace
    )
    assert pvc.metadata.labels["app.kubernetes.io/managed-by"] == "juliarun"
    writer = Batch(
        "writer",
        command=["sh", "-c", "echo kept > /mnt/vol/data"],
        storage="vol",
        image=kube_julia_image,
    )
    b.submit(writer, {"vol": vol})
    assert wait_for_job(b, "writer", timeout=120).phase == "succeeded", output(b, "writer")
    reader = Batch(
        "reader", command=["sh", "-c", "cat /mnt/vol/data"], storage="vol", image=kube_julia_image
    )
    b.submit(reader, {"vol": vol})
    assert wait_for_job(b, "reader", timeout=120).phase == "succeeded", output(b, "reader")
    assert output(b, "reader") == ["kept"]


def test_a_storage_class_that_does_not_exist_fails_before_anything_is_created(
    kube_ctx: Context, kube_api: client.ApiClient, kube_namespace: str
) -> None:
    b = backend(kube_ctx)
    vol = StorageSpec(name="vol", kind="volume", storage_class="no-such-class", size="1Gi")
    with pytest.raises(SpecError) as err:
        b.submit(Batch("uses-vol", command=["true"], storage="vol"), {"vol": vol})
    [(field, rule)] = err.value.errors
    assert field == "storage.vol.storage_class"
    assert "'no-such-class' does not exist" in rule
    for name in _storage_classes(kube_api):
        assert name in rule
    with pytest.raises(StorageError, match=r"storage\.vol\.storage_class: StorageClass"):
        b.provision_storage(vol)
    assert not b.jobs()
    claims = client.CoreV1Api(kube_api).list_namespaced_persistent_volume_claim(kube_namespace)
    assert not claims.items
