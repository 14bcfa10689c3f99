"""The router on the test cluster (its image built from src/juliarun/router/Dockerfile with the
Docker engine and pushed to the test registry): a Deployment of two replicas (host network, one
shared port) on the real node, following the admin's route table kept in a ConfigMap and the
tenants' route objects; a Julia job on the cluster serving HTTP with ``JuliaRun.serve``, exposed
with ``juliarun.expose``, reached by its tenant's member and refused to another tenant's; a
replica pod killed under load loses no route. A tenant member signed in with an ID token exposes
their own job as themselves (a route object in their namespace), a view member may not (the
apiserver's 403), and a route object reaches only a pod of its own namespace, never the node's
network.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from joserfc.jwk import ECKey

import juliarun
from juliarun.backends.kubernetes import KubeClient, api_client
from juliarun.backends.kubernetes import tenants as tn
from juliarun.backends.kubernetes.client import KubeApiError
from juliarun.blocks import KubernetesCluster
from juliarun.errors import PermissionDeniedError
from juliarun.router import ConfigMapRoutes, Route, RouteObjects
from juliarun.router import deploy as rd
from juliarun.router.client import RouterClient
from juliarun.router.config import authentication_config_issuers
from juliarun.router.kube import KubeConn, from_kubeconfig
from juliarun.router.objects import objects_path, route_object
from juliarun.specs import Batch, TenantSpec
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
    # the admin grants tenant a that directory (its pods may mount no other host directory)
    admin = KubeClient(api_client(kubeconfig=kubeconfig_path()))
    try:
        grant = TenantSpec(name=a, users=[{"name": f"oidc1:{alice}"}], host_paths=[str(code)])
        tn.ensure_tenant(admin, grant)
    finally:
        admin.close()
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


# -- per-tenant route objects: written as the tenant member, resolved by the router ---------------

SERVE_CODE = (
    'include(ENV["JULIARUN_JL"]); '
    'JuliaRun.serve(8000) do req; "hello $(JuliaRun.user(req)) $(req.target)\\n"; end'
)


@dataclass
class RouteTenants:
    a: str
    b: str
    alice: str  # edit in a (issuer 1)
    carol: str  # view in a (issuer 1)
    bob: str  # edit in b (issuer 2)
    admin: KubeClient


@pytest.fixture(scope="module")
def route_tenants(kube_api: Any) -> Iterator[RouteTenants]:
    run = uuid.uuid4().hex[:6]
    t = RouteTenants(
        f"routes-a-{run}",
        f"routes-b-{run}",
        f"alice-{run}",
        f"carol-{run}",
        f"bob-{run}",
        KubeClient(api_client(kubeconfig=kubeconfig_path())),
    )
    quota = {"cpu": "2", "memory": "2Gi", "pods": 4, "jobs": 4}
    users_a = [{"name": f"oidc1:{t.alice}"}, {"name": f"oidc1:{t.carol}", "role": "view"}]
    tn.ensure_tenant(t.admin, TenantSpec(name=t.a, quota=quota, users=users_a))
    tn.ensure_tenant(t.admin, TenantSpec(name=t.b, quota=quota, users=[{"name": f"oidc2:{t.bob}"}]))
    try:
        yield t
    finally:
        for name in (t.a, t.b):
            tn.remove_tenant(t.admin, name)
        t.admin.close()


def as_user(token: str, namespace: str, image: str, home: Path) -> Any:
    """A Kubernetes context acting as the bearer of ID token ``token`` (no other credentials)."""
    admin = yaml.safe_load(kubeconfig_path().read_text())
    cluster = admin["clusters"][0]
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "signed-in", "user": {"token": token}}],
        "contexts": [
            {"name": "oidc", "context": {"cluster": cluster["name"], "user": "signed-in"}}
        ],
        "current-context": "oidc",
    }
    block = KubernetesCluster(
        kubeconfig=kubeconfig, namespace=namespace, image=image, home=str(home)
    )
    return block.connect(f"{namespace}-as-{home.name}")


def route_state(url: str, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
    with httpx.Client(timeout=5, headers={"Connection": "close"}) as http:
        resp = http.get(f"{url}/.juliarun/routes/{namespace}/{name}")
    return resp.status_code, resp.json()


def objects_router(url: str) -> RouterClient:
    return RouterClient(url, (url,), RouteObjects(), expect_replicas=2)


# serial: its job runs in a tenant namespace, which every admin context lists cluster-wide
@pytest.mark.serial
def test_a_tenant_member_exposes_their_job_with_their_own_credentials(
    cluster_router: tuple[str, str],
    route_tenants: RouteTenants,
    oidc_issuers: OIDCIssuers,
    kube_julia_image: str,
    tmp_path: Path,
) -> None:
    url, _ = cluster_router
    t = route_tenants
    alice_token = oidc_issuers.token(t.alice, issuer="1")
    carol_token = oidc_issuers.token(t.carol, issuer="1")
    alice = as_user(alice_token, t.a, kube_julia_image, tmp_path / "alice")
    carol = as_user(carol_token, t.a, kube_julia_image, tmp_path / "carol")
    web = Batch("web", ["julia", "-e", SERVE_CODE], cpu="100m", memory="256Mi")
    juliarun.submit(alice, web)
    try:
        # alice (edit) writes the route object in her namespace, as herself
        svc = juliarun.expose(alice, web, port=8000, router=objects_router(url), timeout=240)
        assert svc.url == f"{url}/s/{t.a}/web/"
        obj = t.admin.get(f"{objects_path(t.a)}/web")
        assert obj["spec"]["job"] == "web" and obj["spec"]["port"] == 8000
        assert [o["kind"] for o in obj["metadata"]["ownerReferences"]] == ["Job"]
        answered_by = set()
        for _ in range(20):  # live on both replicas: fresh connections land on either
            with httpx.Client(headers=bearer(alice_token), timeout=10) as http:
                resp = http.get(svc.url + "hi")
                answered_by.add(http.get(url + "/.juliarun/healthz").json()["replica"])
            assert resp.status_code == 200, resp.text
            assert resp.text == f"hello oidc1:{t.alice} /hi\n"
        assert len(answered_by) == 2
        # view members reach it too; another tenant's member does not, nor does nobody
        assert httpx.get(svc.url, headers=bearer(carol_token)).text == f"hello oidc1:{t.carol} /\n"
        bob_token = oidc_issuers.token(t.bob, issuer="2")
        assert httpx.get(svc.url, headers=bearer(bob_token)).status_code == 403
        assert httpx.get(svc.url).status_code == 401

        # carol (view) may not create a route: the real apiserver's 403, as a juliarun error
        with pytest.raises(PermissionDeniedError) as denied:
            juliarun.expose(carol, "web", port=8000, router=objects_router(url), timeout=30)
        err = denied.value
        assert (err.user, err.verb, err.resource, err.namespace) == (
            f"oidc1:{t.carol}",
            "create",
            "routes.juliarun.io",
            t.a,
        )
        assert f"may not create routes.juliarun.io in namespace {t.a}" in (err.hint or "")

        # nor may alice write one in tenant b
        with pytest.raises(PermissionDeniedError) as denied:
            alice.backend.route_writer().post(objects_path(t.b), forged("web", 8000, t.b))
        assert (denied.value.verb, denied.value.namespace) == ("create", t.b)

        # closing takes the route down on every replica; exposing again is live within ms
        assert svc.close() is True
        assert t.admin.get_or_none(f"{objects_path(t.a)}/web") is None
        assert wait_for_state(url, t.a, "web", 404) == {"error": "no such route"}
        started = time.monotonic()
        svc = juliarun.expose(alice, web, port=8000, router=objects_router(url), timeout=30)
        live = time.monotonic() - started
        # how soon after the write both replicas serve a new route object, and a new version
        writer = alice.backend.route_writer()
        uid = writer.get(f"/apis/batch/v1/namespaces/{t.a}/jobs/web")["metadata"]["uid"]
        new, versions = [], []
        for i in range(10):
            version = uuid.uuid4().hex[:12]
            if i < 5:
                writer.delete(f"{objects_path(t.a)}/web")
                wait_for_state(url, t.a, "web", 404)
                obj = route_object(t.a, "web", job="web", port=8000, version=version, job_uid=uid)
                writer.post(objects_path(t.a), obj)
            else:
                writer.merge_patch(f"{objects_path(t.a)}/web", {"spec": {"version": version}})
            (new if i < 5 else versions).append(live_after_write(url, t.a, "web", version))
        print(
            f"expose of a running job: {live * 1000:.0f} ms; live on both replicas after the "
            f"write: a new route object {sorted(round(x * 1000) for x in new)} ms, a new "
            f"version {sorted(round(x * 1000) for x in versions)} ms"
        )
        assert live < 1.0
        assert sorted(new)[2] < 0.1 and sorted(versions)[2] < 0.1  # the medians
    finally:
        juliarun.delete(alice, web, force=True)
    # deleting the job deletes its route (the object is owned by the Job: garbage-collected)
    deadline = time.monotonic() + 30
    while t.admin.get_or_none(f"{objects_path(t.a)}/web") is not None:
        assert time.monotonic() < deadline, "the job's route object outlived the job"
        time.sleep(0.1)
    assert wait_for_state(url, t.a, "web", 404) == {"error": "no such route"}
    alice.close()
    carol.close()


def forged(name: str, port: int, namespace: str, **spec: Any) -> dict[str, Any]:
    obj = route_object(namespace, name, job=name, port=port, version=uuid.uuid4().hex[:12])
    obj["spec"].update(spec)
    return obj


def live_after_write(url: str, namespace: str, name: str, version: str) -> float:
    """Seconds until both replicas serve ``version`` of the route (fresh connections)."""
    written = time.monotonic()
    seen: dict[str, float] = {}
    with httpx.Client(timeout=5, headers={"Connection": "close"}) as http:
        while len(seen) < 2 and time.monotonic() - written < 5:
            state = http.get(f"{url}/.juliarun/routes/{namespace}/{name}").json()
            if state.get("version") == version:
                seen.setdefault(state["replica"], time.monotonic() - written)
    return max(seen.values()) if len(seen) == 2 else 5.0


def wait_for_state(
    url: str, namespace: str, name: str, status: int, *, saying: str = "", timeout: float = 10
) -> dict[str, Any]:
    """The route's state once both replicas answer ``status`` (with ``saying`` in the error)
    for it, ten times in a row on fresh connections."""
    deadline = time.monotonic() + timeout
    replies: list[tuple[int, str]] = []
    while time.monotonic() < deadline:
        code, body = route_state(url, namespace, name)
        replies = [*replies[-9:], (code, str(body.get("error")))]
        if len(replies) == 10 and all(c == status and saying in e for c, e in replies):
            return body
        time.sleep(0.02)
    raise AssertionError(f"{namespace}/{name}: replicas answered {replies}")


# serial: its job runs in a tenant namespace, which every admin context lists cluster-wide
@pytest.mark.serial
def test_route_objects_reach_only_pods_of_their_own_namespace(
    cluster_router: tuple[str, str],
    route_tenants: RouteTenants,
    oidc_issuers: OIDCIssuers,
    kube_julia_image: str,
    tmp_path: Path,
) -> None:
    url, _ = cluster_router
    t = route_tenants
    token = oidc_issuers.token(t.alice, issuer="1")
    writer = as_user(
        token, t.a, kube_julia_image, Path(f"/tmp/routes-{t.a}")
    ).backend.route_writer()
    path = objects_path(t.a)

    # an address written into a route is pruned by the apiserver (strict validation refuses it)
    with pytest.raises(KubeApiError) as bad:
        writer.request(
            "POST",
            path,
            query={"fieldValidation": "Strict"},
            body=forged("apiserver", 6443, t.a, upstream="https://127.0.0.1:6443"),
        )
    assert bad.value.status == 400 and 'unknown field "spec.upstream"' in str(bad.value)
    stored = writer.post(path, forged("apiserver", 6443, t.a, upstream="https://127.0.0.1:6443"))
    assert stored["spec"].keys() == {"job", "port", "version"}
    # ... and a route names a job of its own namespace only: there is none called "apiserver"
    assert wait_for_state(url, t.a, "apiserver", 422) == {
        "error": f"route refused: no job apiserver in namespace {t.a}"
    }

    # a route names a job of its own namespace only: bob's job in tenant b is not found from a
    bobs = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "bobs-web", "namespace": t.b},
        "spec": {  # suspended: it exists, no pod needed
            "suspend": True,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": kube_julia_image}],
                }
            },
        },
    }
    t.admin.post(f"/apis/batch/v1/namespaces/{t.b}/jobs", bobs)
    writer.post(path, forged("bobs-web", 8000, t.a))
    assert wait_for_state(url, t.a, "bobs-web", 422) == {
        "error": f"route refused: no job bobs-web in namespace {t.a}"
    }
    assert httpx.get(f"{url}/s/{t.a}/bobs-web/", headers=bearer(token)).status_code == 404
    writer.delete(f"{path}/bobs-web")

    # a job of alice's on the node's network (its pod's address would be the node's, where the
    # apiserver and the router listen) is refused by the apiserver: the tenant pod policy. (The
    # router refuses to route to such pods too, should one exist: see objects.pick_pod.)
    hostnet = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "hostnet", "namespace": t.a},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "hostNetwork": True,
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "c",
                            "image": kube_julia_image,
                            "command": ["sleep", "300"],
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "32Mi"},
                                "limits": {"memory": "32Mi"},
                            },
                        }
                    ],
                }
            },
        },
    }
    with pytest.raises(KubeApiError) as hostnet_refused:
        writer.post(f"/apis/batch/v1/namespaces/{t.a}/jobs", hostnet)
    assert hostnet_refused.value.status == 403
    assert "a tenant's pods may not use the node's network" in str(hostnet_refused.value)
    if t.admin.get_or_none(f"{path}/apiserver") is not None:
        t.admin.delete(f"{path}/apiserver")
