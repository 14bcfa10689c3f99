"""``juliarun.expose`` end to end: a real Julia job serving HTTP with ``JuliaRun.serve`` (local
backend), reached through the router by its tenant's member and refused to another tenant; and
two router replicas sharing one route table kept in a ConfigMap of the real apiserver: a route is
usable on both the moment ``register`` returns, and a replica killed under load loses no route.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import juliarun
from juliarun.backends.kubernetes import KubeClient, api_client
from juliarun.backends.kubernetes import tenants as tn
from juliarun.router import ConfigMapRoutes, FileRoutes, Route
from juliarun.router.client import RouterClient
from juliarun.router.kube import from_kubeconfig
from juliarun.specs import TenantSpec
from tests.integration.fixtures.kubernetes import kubeconfig_path
from tests.integration.fixtures.oidc import OIDCIssuers
from tests.integration.router_env import (
    echo_server,
    free_port,
    router_config,
    start_router,
)

pytestmark = [pytest.mark.kubernetes, pytest.mark.oidc]

SERVE_JL = """
include(ENV["JULIARUN_JL"])
JuliaRun.serve(parse(Int, ENV["PORT"])) do req
    "hello $(JuliaRun.user(req)) $(join(JuliaRun.groups(req), ",")) $(req.method) $(req.target)" *
        (isempty(req.body) ? "" : " $(String(req.body))") * "\\n"
end
"""


@dataclass
class Tenants:
    a: str
    b: str
    alice: str  # edit in a (issuer 1)
    bob: str  # edit in b (issuer 2)
    admin: KubeClient


@pytest.fixture(scope="module")
def tenants(oidc_issuers: OIDCIssuers, kube_api: Any) -> Iterator[Tenants]:
    run = uuid.uuid4().hex[:6]
    t = Tenants(
        f"router-sa-{run}",
        f"router-sb-{run}",
        f"alice-{run}",
        f"bob-{run}",
        KubeClient(api_client(kubeconfig=kubeconfig_path())),
    )
    tn.ensure_tenant(t.admin, TenantSpec(name=t.a, users=[{"name": f"oidc1:{t.alice}"}]))
    tn.ensure_tenant(t.admin, TenantSpec(name=t.b, users=[{"name": f"oidc2:{t.bob}"}]))
    try:
        yield t
    finally:
        for name in (t.a, t.b):
            tn.remove_tenant(t.admin, name)
        t.admin.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.julia
def test_a_julia_service_is_exposed_to_its_tenant_only(
    julia: str,
    juliarun_home: Path,
    tmp_path: Path,
    tenants: Tenants,
    oidc_issuers: OIDCIssuers,
) -> None:
    alice = oidc_issuers.token(tenants.alice, ["staff"], issuer="1")
    bob = oidc_issuers.token(tenants.bob, issuer="2")
    routes = FileRoutes(tmp_path / "routes.json")
    router = start_router(
        router_config(
            tmp_path,
            routes={"kind": "file", "path": str(routes.path)},
            kubeconfig=str(kubeconfig_path()),
        )
    )
    try:
        code = tmp_path / "code"
        code.mkdir()
        (code / "serve.jl").write_text(SERVE_JL)
        port = free_port()
        ctx = juliarun.init("local")
        juliarun.define_storage(ctx, name="code", kind="host", path=str(code))
        job = juliarun.JuliaBatch(
            "web", "/mnt/code/serve.jl", "code", tenant=tenants.a, env={"PORT": str(port)}
        )
        juliarun.submit(ctx, job)

        svc = juliarun.expose(
            ctx, job, port=port, router=RouterClient(router.url, (router.url,), routes)
        )

        assert svc.url == f"{router.url}/s/{tenants.a}/web/"
        assert (svc.namespace, svc.upstream) == (tenants.a, f"http://127.0.0.1:{port}")
        # live when expose returns: the first request is answered by the Julia service
        resp = httpx.get(svc.url + "hello?x=1", headers=bearer(alice), timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.text == f"hello oidc1:{tenants.alice} oidc1:staff GET /hello?x=1\n"
        posted = httpx.post(svc.url + "data", content=b"x=1&y=2", headers=bearer(alice))
        assert posted.text == f"hello oidc1:{tenants.alice} oidc1:staff POST /data x=1&y=2\n"
        assert httpx.get(svc.url, headers=bearer(bob), timeout=10).status_code == 403
        assert httpx.get(svc.url, timeout=10).status_code == 401
        assert svc.close() is True
        deadline = time.monotonic() + 5
        while httpx.get(svc.url, headers=bearer(alice), timeout=10).status_code != 404:
            assert time.monotonic() < deadline, "the route stayed after close()"
            time.sleep(0.01)
    finally:
        router.stop()


@pytest.mark.docker
@pytest.mark.julia
def test_a_julia_service_in_a_docker_container_is_exposed_to_its_tenant_only(
    julia_image: str,
    juliarun_home: Path,
    tmp_path: Path,
    tenants: Tenants,
    oidc_issuers: OIDCIssuers,
) -> None:
    alice = oidc_issuers.token(tenants.alice, issuer="1")
    bob = oidc_issuers.token(tenants.bob, issuer="2")
    routes = FileRoutes(tmp_path / "routes.json")
    router = start_router(
        router_config(
            tmp_path,
            routes={"kind": "file", "path": str(routes.path)},
            kubeconfig=str(kubeconfig_path()),
        )
    )
    code = tmp_path / "code"
    code.mkdir()
    (code / "serve.jl").write_text(SERVE_JL)
    ctx = juliarun.init("docker")
    job = juliarun.JuliaBatch(
        "dweb", "/mnt/code/serve.jl", "code", tenant=tenants.a, env={"PORT": "8000"}
    )
    try:
        juliarun.define_storage(ctx, name="code", kind="host", path=str(code))
        juliarun.submit(ctx, job)
        svc = juliarun.expose(
            ctx, job, port=8000, router=RouterClient(router.url, (router.url,), routes)
        )
        assert svc.upstream.startswith("http://") and svc.upstream.endswith(":8000")
        assert not svc.upstream.startswith("http://127.")  # the container's own address
        resp = httpx.get(svc.url + "x", headers=bearer(alice), timeout=10)
        assert resp.text == f"hello oidc1:{tenants.alice}  GET /x\n"
        assert httpx.get(svc.url, headers=bearer(bob), timeout=10).status_code == 403
    finally:
        juliarun.delete(ctx, job, force=True)
        ctx.close()
        router.stop()


@pytest.fixture
def route_namespace(tenants: Tenants) -> Iterator[str]:
    name = f"router-rt-{uuid.uuid4().hex[:6]}"
    tenants.admin.post(
        "/api/v1/namespaces",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "juliarun"}},
        },
    )
    yield name
    tenants.admin.delete(f"/api/v1/namespaces/{name}")


def test_two_replicas_share_the_configmap_route_table_and_a_killed_one_loses_no_route(
    tmp_path: Path, tenants: Tenants, oidc_issuers: OIDCIssuers, route_namespace: str
) -> None:
    alice = oidc_issuers.token(tenants.alice, issuer="1")
    table = {"kind": "configmap", "namespace": route_namespace, "name": "juliarun-routes"}
    config = router_config(tmp_path, routes=table, kubeconfig=str(kubeconfig_path()))
    r1, r2 = start_router(config), start_router(config)
    source = ConfigMapRoutes(from_kubeconfig(kubeconfig_path()), route_namespace, "juliarun-routes")
    client = RouterClient(r1.url, (r1.url, r2.url), source)
    try:
        with echo_server() as upstream:
            waits = []
            for i in range(5):
                route = Route(namespace=tenants.a, name=f"svc{i}", upstream=upstream)
                started = time.perf_counter()
                client.register(route, timeout=10)
                waits.append(time.perf_counter() - started)
                for replica in (r1, r2):  # usable on both at once
                    url = f"{replica.url}/s/{tenants.a}/svc{i}/"
                    assert httpx.get(url, headers=bearer(alice)).status_code == 200
            print(f"register → live on 2 replicas: {[round(w * 1000, 1) for w in waits]} ms")

            # load on both replicas; r1 is killed in the middle of it
            stop = threading.Event()
            results: dict[str, list[int]] = {r1.url: [], r2.url: []}

            def load(replica: str) -> None:
                with httpx.Client(headers=bearer(alice), timeout=5) as http:
                    i = 0
                    while not stop.is_set():
                        try:
                            status = http.get(f"{replica}/s/{tenants.a}/svc{i % 5}/").status_code
                        except httpx.HTTPError:
                            status = 0
                        results[replica].append(status)
                        i += 1

            threads = [threading.Thread(target=load, args=(r.url,)) for r in (r1, r2)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            r1.kill()
            time.sleep(1.0)
            # a route written while r1 is down
            late = Route(namespace=tenants.a, name="late", upstream=upstream)
            RouterClient(r2.url, (r2.url,), source).register(late, timeout=10)
            r1 = start_router(config, r1.port)
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join()

            served = results[r2.url]
            assert len(served) > 20 and set(served) == {200}  # the survivor never failed
            for name in [f"svc{i}" for i in range(5)] + ["late"]:
                for replica in (r1, r2):
                    resp = httpx.get(f"{replica.url}/s/{tenants.a}/{name}/", headers=bearer(alice))
                    assert resp.status_code == 200, (replica.url, name)
            assert set(source.read()) == {f"{tenants.a}.svc{i}" for i in range(5)} | {
                f"{tenants.a}.late"
            }
    finally:
        r1.stop()
        r2.stop()
