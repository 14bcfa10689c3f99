"""The router on the test cluster (its image built from src/juliarun/router/Dockerfile with the
Docker engine and pushed to the test registry): a Deployment of two replicas (host network, one
shared port) on the real node, sharing the route table kept in a ConfigMap; a Julia job on the
cluster serving HTTP with ``JuliaRun.serve``, exposed with ``juliarun.expose``, reached by its
tenant's member and refused to another tenant's; a replica pod killed under load loses no route.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey

import juliarun
from juliarun.backends.kubernetes import KubeClient, api_client
from juliarun.backends.kubernetes import tenants as tn
from juliarun.router import ConfigMapRoutes, Route
from juliarun.router import deploy as rd
from juliarun.router.client import RouterClient
from juliarun.router.config import authentication_config_issuers
from juliarun.router.kube import KubeConn, from_kubeconfig
from juliarun.specs import TenantSpec
from tests.integration.fixtures.kubernetes import kubeconfig_path
from tests.integration.fixtures.oidc import OIDCIssuers
from tests.integration.router_env import echo_server, free_port, router_image

pytestmark = [pytest.mark.kubernetes, pytest.mark.oidc, pytest.mark.julia, pytest.mark.docker]

SERVE_JL = """
include(ENV["JULIARUN_JL"])
JuliaRun.serve(8000) do req
    "hello $(JuliaRun.user(req)) from $(gethostname()) $(req.target)\\n"
end
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def cluster_router(kube_real_node: str, oidc_issuers: OIDCIssuers) -> Iterator[tuple[str, str]]:
    """(the router's URL, its namespace): two replicas on the real node."""
    image = router_image(os.environ["JULIARUN_BASE_IMAGE"], os.environ["JULIARUN_REGISTRY"])
    namespace = f"router-k-{uuid.uuid4().hex[:6]}"
    port = free_port()
    authn = Path(
        os.environ.get("JULIARUN_OIDC_AUTHN_CONFIG")
        or Path.home() / ".cache/juliarun/oidc/authentication-config.yaml"
    )
    issuers = authentication_config_issuers(authn.read_text())
    config = {
        "issuers": [i.model_dump(mode="json") for i in issuers],
        "kube_server": "https://127.0.0.1:6443",
        "public_url": f"http://127.0.0.1:{port}",
    }
    key = json.dumps(ECKey.generate_key("P-256").as_dict(private=True))
    conn = from_kubeconfig(kubeconfig_path())
    objects = rd.manifests(
        namespace, image, config, key, replicas=2, port=port, node_selector={
            "kubernetes.io/hostname": kube_real_node
        }
    )  # fmt: skip
    rd.apply(conn, objects)
    try:
        rd.wait_ready(conn, namespace, 2, timeout=180)
        yield f"http://127.0.0.1:{port}", namespace
    finally:
        with conn.client() as http:
            http.delete(f"/api/v1/namespaces/{namespace}")
            for obj in objects:
                if obj["kind"].startswith("Cluster"):
                    http.delete(f"{rd._path(obj)}/{obj['metadata']['name']}")


@pytest.fixture(scope="module")
def tenants(kube_api: Any) -> Iterator[tuple[str, str, str, str]]:
    run = uuid.uuid4().hex[:6]
    a, b, alice, bob = f"router-ka-{run}", f"router-kb-{run}", f"alice-{run}", f"bob-{run}"
    admin = KubeClient(api_client(kubeconfig=kubeconfig_path()))
    tn.ensure_tenant(admin, TenantSpec(name=a, users=[{"name": f"oidc1:{alice}"}]))
    tn.ensure_tenant(admin, TenantSpec(name=b, users=[{"name": f"oidc2:{bob}"}]))
    try:
        yield a, b, alice, bob
    finally:
        for name in (a, b):
            tn.remove_tenant(admin, name)
        admin.close()


def router_client(url: str, namespace: str) -> RouterClient:
    routes = ConfigMapRoutes(from_kubeconfig(kubeconfig_path()), namespace, rd.ROUTES)
    return RouterClient(url, (url,), routes, expect_replicas=2)


# serial: its job runs in a tenant namespace, which every admin context lists cluster-wide
@pytest.mark.serial
def test_a_julia_job_on_the_cluster_is_exposed_through_two_router_replicas(
    cluster_router: tuple[str, str],
    tenants: tuple[str, str, str, str],
    kube_ctx: Any,
    oidc_issuers: OIDCIssuers,
    tmp_path: Path,
) -> None:
    url, namespace = cluster_router
    a, _, alice, bob = tenants
    code = tmp_path / "code"
    code.mkdir()
    (code / "serve.jl").write_text(SERVE_JL)
    code.chmod(0o755)
    (code / "serve.jl").chmod(0o644)
    juliarun.define_storage(kube_ctx, name="code", kind="host", path=str(code))
    job = juliarun.JuliaBatch("web", "/mnt/code/serve.jl", "code", tenant=a, cpu="100m")
    juliarun.submit(kube_ctx, job)
    try:
        svc = juliarun.expose(
            kube_ctx, job, port=8000, router=router_client(url, namespace), timeout=240
        )
        assert svc.url == f"{url}/s/{a}/web/"
        assert svc.upstream.startswith("http://") and svc.upstream.endswith(":8000")
        alice_token = oidc_issuers.token(alice, issuer="1")
        # live on both replicas when expose returns: fresh connections land on either
        answered_by = set()
        for _ in range(20):
            with httpx.Client(headers=bearer(alice_token), timeout=10) as http:
                resp = http.get(svc.url + "hi")
                health = http.get(url + "/.juliarun/healthz").json()
            assert resp.status_code == 200, resp.text
            assert resp.text == f"hello oidc1:{alice} from web-0 /hi\n"  # the job's worker 0
            answered_by.add(health["replica"])
        assert len(answered_by) == 2
        bob_token = oidc_issuers.token(bob, issuer="2")
        assert httpx.get(svc.url, headers=bearer(bob_token)).status_code == 403
        assert httpx.get(svc.url).status_code == 401
    finally:
        juliarun.delete(kube_ctx, job, force=True)


def test_a_router_replica_killed_under_load_loses_no_route(
    cluster_router: tuple[str, str],
    tenants: tuple[str, str, str, str],
    oidc_issuers: OIDCIssuers,
) -> None:
    url, namespace = cluster_router
    a, _, alice, _ = tenants
    token = oidc_issuers.token(alice, issuer="1")
    client = router_client(url, namespace)
    conn: KubeConn = from_kubeconfig(kubeconfig_path())
    with echo_server() as upstream:
        names = [f"load{i}" for i in range(3)]
        for name in names:
            client.register(Route(namespace=a, name=name, upstream=upstream), timeout=30)
        stop = threading.Event()
        results: list[int] = []

        def load() -> None:
            i = 0
            while not stop.is_set():
                try:  # a fresh connection per request, as independent clients would
                    with httpx.Client(headers=bearer(token), timeout=5) as http:
                        status = http.get(f"{url}/s/{a}/{names[i % 3]}/").status_code
                except httpx.HTTPError:
                    status = 0
                results.append(status)
                i += 1

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        with conn.client() as http:
            pods = http.get(
                f"/api/v1/namespaces/{namespace}/pods",
                params={"labelSelector": "app.kubernetes.io/name=juliarun-router"},
            ).json()["items"]
            victim = pods[0]["metadata"]["name"]
            killed = http.delete(
                f"/api/v1/namespaces/{namespace}/pods/{victim}", params={"gracePeriodSeconds": 0}
            )
            assert killed.status_code == 200
        killed_at = len(results)
        deadline = time.monotonic() + 60
        while len(results) - killed_at < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()
        after = results[killed_at:]
        print(f"{len(results)} requests, {len(after)} after the kill, failures: {after.count(0)}")
        assert len(after) >= 40
        # only requests in flight on the killed replica's connections may fail (one per client)
        assert [s for s in results if s not in (0, 200)] == []
        assert after.count(0) <= len(threads)
        # the replacement replica serves every route: the table lives in the ConfigMap
        conn_ok = rd.wait_ready(conn, namespace, 2, timeout=120)
        assert conn_ok is None
        late = Route(namespace=a, name="late", upstream=upstream)
        client.register(late, timeout=30)
        with conn.client() as http:
            pods = http.get(
                f"/api/v1/namespaces/{namespace}/pods",
                params={"labelSelector": "app.kubernetes.io/name=juliarun-router"},
            ).json()["items"]
        assert victim not in [p["metadata"]["name"] for p in pods]
        seen: dict[str, set[str]] = {}
        for _ in range(40):
            with httpx.Client(headers=bearer(token), timeout=5) as http:
                for name in [*names, "late"]:
                    state = http.get(f"{url}/.juliarun/routes/{a}/{name}").json()
                    seen.setdefault(state["replica"], set()).add(name)
            if len(seen) == 2 and all(len(v) == 4 for v in seen.values()):
                break
        assert len(seen) == 2 and all(v == {*names, "late"} for v in seen.values()), seen
