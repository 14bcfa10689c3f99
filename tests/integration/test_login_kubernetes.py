"""Tenants by identity, with two issuers at once: a user of each issuer signs in (the real
authorization-code flow with PKCE through ``juliarun login``'s loopback redirect, driven by a
headless browser), runs real Julia on the real node in their tenant, lists and tails it, and the
real apiserver refuses them the other tenant (a clear juliarun error, from the API and from the
command line). Tenant members are the issuers' groups (RoleBindings to ``oidc1:<group>`` /
``oidc2:<group>``), next to a certificate user. Issuer 2 gives its user a short-lived ID token,
so the cluster client refreshes it for real while the job runs.

Each test uses its own tenants and JULIARUN_HOMEs; the tenants' namespaces are deleted after.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import juliarun
from juliarun import cli_login
from juliarun.api import Context
from juliarun.auth import OIDCClient, TokenCache, login_browser
from juliarun.backends.kubernetes import KubeClient
from juliarun.backends.kubernetes import tenants as tn
from juliarun.backends.kubernetes.manifests import MANAGED_BY, TENANT_LABEL
from juliarun.blocks import KubernetesCluster, OIDCCredentials
from juliarun.errors import PermissionDeniedError
from juliarun.specs import Batch, TenantSpec
from tests.integration.fixtures.kubernetes import kubeconfig_path
from tests.integration.fixtures.oidc import PREFIXES, OIDCIssuers
from tests.integration.login_browser import HeadlessBrowser

pytestmark = [pytest.mark.kubernetes, pytest.mark.oidc]

ROOT = Path(__file__).resolve().parents[2]


def cluster_only_kubeconfig() -> dict[str, Any]:
    """The test cluster's server and CA, and a user with no credentials of its own."""
    admin = yaml.safe_load(kubeconfig_path().read_text())
    cluster = admin["clusters"][0]
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "signed-in", "user": {}}],
        "contexts": [
            {"name": "oidc", "context": {"cluster": cluster["name"], "user": "signed-in"}}
        ],
        "current-context": "oidc",
    }


@pytest.fixture
def tenants(admin: KubeClient, kube_api: Any) -> Iterator[tuple[str, str, str]]:
    """Two tenant names and a run id; the tenants are removed after."""
    run = uuid.uuid4().hex[:6]
    names = (f"login-a-{run}", f"login-b-{run}")
    yield (*names, run)
    selector = f"{MANAGED_BY}=juliarun,{TENANT_LABEL} in ({','.join(names)})"
    for ns in admin.get("/api/v1/namespaces", labelSelector=selector).get("items") or []:
        tn.remove_tenant(admin, ns["metadata"]["name"])


def issuer_client(issuers: OIDCIssuers, issuer: str) -> OIDCClient:
    conf = issuers.config["issuers"][issuer]
    client_id = conf["default_client"]
    return OIDCClient(
        issuer=conf["issuer"],
        client_id=client_id,
        client_secret=conf["clients"][client_id]["secret"],
        scopes=conf["scope"].split(),
        ca_file=str(issuers.ca),
    )


def credentials(client: OIDCClient) -> OIDCCredentials:
    return OIDCCredentials(
        issuer=client.issuer,
        client_id=client.client_id,
        client_secret=client.client_secret,
        scopes=client.scopes,
        ca_file=client.ca_file,
    )


def julia_job(name: str, image: str, **extra: Any) -> Batch:
    code = f'for i in 1:3; println("hello $i from {name}"); end'
    return Batch(name, ["julia", "-e", code], image=image, cpu="100m", memory="256Mi", **extra)


# serial: its jobs run in tenant namespaces, which every admin context lists cluster-wide
@pytest.mark.serial
def test_users_of_two_issuers_work_in_their_tenants_and_are_refused_the_other(
    admin: KubeClient,
    tenants: tuple[str, str, str],
    oidc_issuers: OIDCIssuers,
    kube_julia_image: str,
    tmp_path: Path,
) -> None:
    a, b, run = tenants
    group_a, group_b = f"team-a-{run}", f"team-b-{run}"
    for name, member in ((a, f"{PREFIXES['1']}{group_a}"), (b, f"{PREFIXES['2']}{group_b}")):
        tn.ensure_tenant(
            admin,
            TenantSpec(
                name=name,
                quota={"cpu": "2", "memory": "2Gi", "pods": 4, "jobs": 4},
                users=[
                    {"name": member, "kind": "Group", "role": "edit"},
                    {"name": f"cert-user-{run}", "role": "view"},  # certificates still work
                ],
            ),
        )
    bindings = admin.get(f"/apis/{tn.RBAC}/namespaces/{a}/rolebindings")["items"]
    assert sorted(s["name"] for item in bindings for s in item["subjects"]) == [
        f"cert-user-{run}",
        f"oidc1:{group_a}",
    ]

    # Each user signs in at their own issuer, in their own juliarun home.
    browser = HeadlessBrowser(oidc_issuers.ca)
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    alice_user, bob_user = f"alice-{run}", f"bob-{run}"
    client1, client2 = issuer_client(oidc_issuers, "1"), issuer_client(oidc_issuers, "2")
    TokenCache(alice_home).save(
        login_browser(client1, browser.opener(alice_user, [group_a]), timeout=60)
    )
    bob_tokens = login_browser(
        client2, browser.opener(bob_user, [group_b], id_token_ttl="6"), timeout=60
    )
    bob_cache = TokenCache(bob_home).save(bob_tokens)
    assert browser.errors == []
    assert bob_tokens.expires_at - bob_tokens.issued_at == 6

    kubeconfig = cluster_only_kubeconfig()

    def ctx_for(client: OIDCClient, home: Path, namespace: str) -> Context:
        block = KubernetesCluster(
            kubeconfig=kubeconfig,
            namespace=namespace,
            oidc=credentials(client),
            image=kube_julia_image,
            home=str(home),
        )
        return block.connect(f"{namespace}-as-{home.name}")

    alice, bob = ctx_for(client1, alice_home, a), ctx_for(client2, bob_home, b)
    alice_in_b = ctx_for(client1, alice_home, b)
    try:
        juliarun.submit(alice, julia_job("hello-a", kube_julia_image))
        juliarun.submit(bob, julia_job("hello-b", kube_julia_image))
        assert [j.name for j in juliarun.list(alice)] == ["hello-a"]
        assert [j.name for j in juliarun.list(bob)] == ["hello-b"]
        assert admin.get_or_none(f"/apis/batch/v1/namespaces/{a}/jobs/hello-a") is not None

        for ctx, name in ((alice, "hello-a"), (bob, "hello-b")):
            status = juliarun.wait(ctx, name, timeout=240)
            assert status.phase == "succeeded", status.describe()
            out = io.StringIO()
            juliarun.tail(ctx, name, follow=True, timeout=60, out=out)
            said = [line for line in out.getvalue().splitlines() if "hello" in line]
            assert [line.endswith(f"hello {i} from {name}") for i, line in enumerate(said, 1)] == [
                True,
                True,
                True,
            ], out.getvalue()

        # bob's ID token lived 6 s: the cluster client refreshed it at issuer 2 (the apiserver
        # would refuse an expired one), and the cache holds the new tokens, still 0600.
        refreshed = TokenCache(bob_home).load(client2.issuer, client2.client_id)
        assert refreshed is not None
        assert refreshed.issued_at > bob_tokens.issued_at
        assert refreshed.claims["preferred_username"] == bob_user
        assert oct(bob_cache.stat().st_mode & 0o777) == "0o600"

        # alice in B's tenant: the real apiserver says no, as a juliarun error naming her
        with pytest.raises(PermissionDeniedError) as denied:
            juliarun.list(alice_in_b)
        assert (denied.value.user, denied.value.verb, denied.value.namespace) == (
            f"oidc1:{alice_user}",
            "list",
            b,
        )
        with pytest.raises(PermissionDeniedError) as denied:
            juliarun.status(alice_in_b, "hello-b")
        assert (denied.value.verb, denied.value.namespace) == ("get", b)
        with pytest.raises(PermissionDeniedError) as denied:
            juliarun.submit(alice, julia_job("sneaky", kube_julia_image, tenant=b))
        assert (denied.value.verb, denied.value.namespace) == ("create", b)
        with pytest.raises(PermissionDeniedError) as denied:
            juliarun.delete(alice_in_b, "hello-b", force=True)
        assert denied.value.namespace == b
        assert admin.get_or_none(f"/apis/batch/v1/namespaces/{b}/jobs/hello-b") is not None

        # the same from the command line: init("kubernetes") as the signed-in user (settings)
        config_file = tmp_path / "cluster.kubeconfig"
        config_file.write_text(yaml.safe_dump(kubeconfig))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            "JULIARUN_HOME": str(alice_home),
            "JULIARUN_KUBECONFIG": str(config_file),
            "JULIARUN_KUBE_NAMESPACE": b,
            "JULIARUN_OIDC_KUBERNETES": "1",
            "JULIARUN_OIDC_ISSUER": client1.issuer,
            "JULIARUN_OIDC_CLIENT_ID": client1.client_id,
            "JULIARUN_OIDC_CA": str(oidc_issuers.ca),
        }
        done = subprocess.run(
            [sys.executable, "-m", "juliarun.cli", "list", "--cluster", "kubernetes"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        assert "403" in done.stderr
        assert f"oidc1:{alice_user} may not list jobs.batch in namespace {b}" in done.stderr
        env["JULIARUN_KUBE_NAMESPACE"] = a
        done = subprocess.run(
            [sys.executable, "-m", "juliarun.cli", "list", "--cluster", "kubernetes"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "hello-a" in done.stdout
        assert "hello-b" not in done.stdout

        assert juliarun.delete(alice, "hello-a", force=True)
        assert juliarun.delete(bob, "hello-b", force=True)
    finally:
        browser.close()
        for ctx in (alice, bob, alice_in_b):
            ctx.close()


def test_a_cluster_context_without_a_sign_in_says_to_log_in(
    oidc_issuers: OIDCIssuers, kube_api: Any, tmp_path: Path
) -> None:
    block = KubernetesCluster(
        kubeconfig=cluster_only_kubeconfig(),
        namespace="juliarun",
        oidc=credentials(issuer_client(oidc_issuers, "1")),
        home=str(tmp_path),
    )
    from juliarun.auth import NotSignedInError

    with pytest.raises(NotSignedInError) as err:
        block.connect("nobody")
    assert err.value.hint.startswith(f"run `juliarun login --issuer {oidc_issuers.issuer_url('1')}")


@pytest.mark.prefect_server
def test_saved_blocks_sign_in_by_name_and_act_as_the_user(
    admin: KubeClient,
    tenants: tuple[str, str, str],
    oidc_issuers: OIDCIssuers,
    prefect_api_url: str,
    tmp_path: Path,
) -> None:
    """An OIDCCredentials block saved on the Prefect server: ``juliarun login --issuer <block>``
    signs in with it, and ``juliarun.init(<saved cluster block>)`` referencing it acts as that
    user: their tenant answers, the other refuses."""
    a, b, run = tenants
    group = f"team-s-{run}"
    tn.ensure_tenant(admin, TenantSpec(name=a, users=[{"name": f"oidc2:{group}", "kind": "Group"}]))
    tn.ensure_tenant(admin, TenantSpec(name=b))
    home = tmp_path / "home"
    creds_name, cluster_name, other_name = (
        f"login-issuer2-{run}",
        f"login-{a}",
        f"login-{b}",
    )
    creds = credentials(issuer_client(oidc_issuers, "2"))
    creds.save(creds_name)
    try:
        saved = OIDCCredentials.load(creds_name)
        assert isinstance(saved, OIDCCredentials)
        for name, namespace in ((cluster_name, a), (other_name, b)):
            KubernetesCluster(
                kubeconfig=cluster_only_kubeconfig(),
                namespace=namespace,
                oidc=saved,
                home=str(home),
            ).save(name)

        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            "JULIARUN_HOME": str(home),
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "juliarun.cli_login",
                "login",
                "--issuer",
                creds_name,
                "--no-browser",
                "--timeout",
                "60",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        proc.stderr.readline()
        url = proc.stderr.readline().strip()
        assert url.startswith(creds.issuer + "/authorize?")
        browser = HeadlessBrowser(oidc_issuers.ca)
        try:
            assert browser.sign_in(url, f"sam-{run}", [group]) == 200
        finally:
            browser.close()
        out, errs = proc.communicate(timeout=60)
        assert proc.returncode == 0, errs
        assert out.startswith(f"signed in as sam-{run} at {creds.issuer} ")

        who = CliRunner().invoke(
            cli_login.app, ["whoami", "--cluster", cluster_name], env={"JULIARUN_HOME": str(home)}
        )
        assert (who.exit_code, who.output) == (
            0,
            f"kubernetes ({cluster_name}): oidc2:sam-{run}; groups: oidc2:{group}, "
            "system:authenticated\n",
        )

        ctx = juliarun.init(cluster_name)
        other = juliarun.init(other_name)
        try:
            assert juliarun.list(ctx) == []
            with pytest.raises(PermissionDeniedError) as denied:
                juliarun.list(other)
            assert (denied.value.user, denied.value.namespace) == (f"oidc2:sam-{run}", b)
        finally:
            ctx.close()
            other.close()
    finally:
        for name in (cluster_name, other_name):
            with contextlib.suppress(Exception):
                KubernetesCluster.delete(name)
        with contextlib.suppress(Exception):
            OIDCCredentials.delete(creds_name)
