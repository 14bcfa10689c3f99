"""Named storage as a drive (issue 12, item 6): the router serves a storage over WebDAV to the
members of its tenant, driven by a real WebDAV client (Debian's rclone) with real ID tokens from
both test issuers and real SubjectAccessReviews: a member lists, reads and writes; a viewer only
reads; a non-member is refused; a read-only storage stays read-only; nothing outside the
storage's folder can be reached."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from juliarun.backends.kubernetes import KubeClient, api_client
from juliarun.backends.kubernetes import tenants as tn
from juliarun.specs import TenantSpec
from tests.integration.fixtures._service import require
from tests.integration.fixtures.kubernetes import kubeconfig_path
from tests.integration.fixtures.oidc import OIDCIssuers
from tests.integration.router_env import RouterProcess, raw_request, router_config, start_router

pytestmark = [pytest.mark.kubernetes, pytest.mark.oidc]

RCLONE = os.environ.get("JULIARUN_RCLONE", "/usr/bin/rclone")


@dataclass
class Drives:
    router: RouterProcess
    a: str
    b: str
    results: Path  # a/results: read-write
    frozen: Path  # a/frozen: read-only
    data: Path  # b/data
    alice: str  # token: edit in a
    bob: str  # token: view in b (by group)

    def url(self, namespace: str, name: str) -> str:
        return f"{self.router.url}/storage/{namespace}/{name}"


def rclone(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    if not os.access(RCLONE, os.X_OK):
        require("clients", lambda: f"{RCLONE} is missing (scripts/testenv up clients)")
    return subprocess.run(
        [
            RCLONE,
            *args,
            "--webdav-url",
            url,
            "--webdav-bearer-token",
            token,
            "--retries",
            "1",
            "--low-level-retries",
            "1",
            "--config",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def drives(
    oidc_issuers: OIDCIssuers, kube_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Drives]:
    run = uuid.uuid4().hex[:6]
    a, b = f"drive-a-{run}", f"drive-b-{run}"
    alice, bob = f"alice-{run}", f"bob-{run}"
    admin = KubeClient(api_client(kubeconfig=kubeconfig_path()))
    tn.ensure_tenant(admin, TenantSpec(name=a, users=[{"name": f"oidc1:{alice}"}]))
    tn.ensure_tenant(
        admin,
        TenantSpec(name=b, users=[{"name": f"oidc2:team-{run}", "kind": "Group", "role": "view"}]),
    )
    tmp = tmp_path_factory.mktemp("drives")
    folders = {n: tmp / n for n in ("results", "frozen", "data")}
    for folder in folders.values():
        folder.mkdir()
    (folders["results"] / "hello.txt").write_text("hello from the cluster\n")
    (folders["frozen"] / "input.csv").write_text("x,y\n1,2\n")
    (folders["data"] / "b.txt").write_text("team b\n")
    (tmp / "secret.txt").write_text("outside every storage\n")
    (folders["results"] / "escape").symlink_to(tmp / "secret.txt")
    storage = [
        {"namespace": a, "name": "results", "path": str(folders["results"])},
        {"namespace": a, "name": "frozen", "path": str(folders["frozen"]), "read_only": True},
        {"namespace": b, "name": "data", "path": str(folders["data"])},
    ]
    config = router_config(
        tmp,
        routes={"kind": "file", "path": str(tmp / "routes.json")},
        kubeconfig=str(kubeconfig_path()),
        storage=storage,
    )
    router = start_router(config)
    try:
        yield Drives(
            router,
            a,
            b,
            folders["results"],
            folders["frozen"],
            folders["data"],
            oidc_issuers.token(alice, ["staff"], issuer="1"),
            oidc_issuers.token(bob, [f"team-{run}"], issuer="2"),
        )
    finally:
        router.stop()
        for name in (a, b):
            tn.remove_tenant(admin, name)
        admin.close()


def test_a_member_lists_reads_and_writes_with_a_webdav_client(
    drives: Drives, tmp_path: Path
) -> None:
    url = drives.url(drives.a, "results")
    listed = rclone(url, drives.alice, "lsf", ":webdav:")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {"hello.txt"}
    read = rclone(url, drives.alice, "cat", ":webdav:hello.txt")
    assert read.stdout == "hello from the cluster\n"
    local = tmp_path / "model.bin"
    local.write_bytes(b"\x00\x01weights" * 1000)
    wrote = rclone(url, drives.alice, "copyto", str(local), ":webdav:runs/1/model.bin")
    assert wrote.returncode == 0, wrote.stderr
    assert (drives.results / "runs" / "1" / "model.bin").read_bytes() == local.read_bytes()
    moved = rclone(url, drives.alice, "moveto", ":webdav:runs/1/model.bin", ":webdav:final.bin")
    assert moved.returncode == 0, moved.stderr
    assert (drives.results / "final.bin").read_bytes() == local.read_bytes()
    assert not (drives.results / "runs" / "1" / "model.bin").exists()


def test_a_webdav_client_may_send_the_token_as_its_password(drives: Drives) -> None:
    url = drives.url(drives.a, "results") + "/hello.txt"
    bare = httpx.get(url, timeout=30)
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"].startswith("Basic ")
    basic = httpx.get(url, auth=("anyone", drives.alice), timeout=30)  # davfs2 / cadaver style
    assert (basic.status_code, basic.text) == (200, "hello from the cluster\n")
    wrong = httpx.get(url, auth=("anyone", drives.alice[:-4] + "AAAA"), timeout=30)
    assert wrong.status_code == 401


def test_a_non_member_is_refused_whatever_the_method(drives: Drives) -> None:
    url = drives.url(drives.a, "results")
    listed = rclone(url, drives.bob, "lsf", ":webdav:")
    assert listed.returncode != 0
    auth = {"Authorization": f"Bearer {drives.bob}"}
    for method in ("PROPFIND", "GET", "PUT", "DELETE", "MKCOL"):
        resp = httpx.request(method, url + "/hello.txt", headers=auth, content=b"x", timeout=30)
        assert resp.status_code == 403, (method, resp.status_code)
    assert (drives.results / "hello.txt").read_text() == "hello from the cluster\n"
    # the same answer for a storage that does not exist: names cannot be probed
    missing = httpx.request("PROPFIND", drives.url(drives.a, "nope"), headers=auth, timeout=30)
    assert missing.status_code == 403


def test_a_viewer_reads_but_does_not_write(drives: Drives, tmp_path: Path) -> None:
    url = drives.url(drives.b, "data")
    read = rclone(url, drives.bob, "cat", ":webdav:b.txt")
    assert read.stdout == "team b\n", read.stderr
    local = tmp_path / "x.txt"
    local.write_text("x\n")
    wrote = rclone(url, drives.bob, "copyto", str(local), ":webdav:x.txt")
    assert wrote.returncode != 0
    assert not (drives.data / "x.txt").exists()


def test_read_only_storage_stays_read_only_for_its_editors(drives: Drives) -> None:
    url = drives.url(drives.a, "frozen")
    auth = {"Authorization": f"Bearer {drives.alice}"}
    assert rclone(url, drives.alice, "cat", ":webdav:input.csv").stdout == "x,y\n1,2\n"
    for method, path in (("PUT", "/new.csv"), ("DELETE", "/input.csv"), ("MKCOL", "/dir")):
        resp = httpx.request(method, url + path, headers=auth, content=b"1", timeout=30)
        assert resp.status_code == 403, (method, resp.status_code)
    assert sorted(p.name for p in drives.frozen.iterdir()) == ["input.csv"]


def test_nothing_outside_the_storage_folder_can_be_reached(drives: Drives) -> None:
    url = drives.url(drives.a, "results")
    auth = {"Authorization": f"Bearer {drives.alice}"}
    escape = httpx.get(url + "/escape", headers=auth, timeout=30)  # a link out of the folder
    assert escape.status_code in (403, 404)
    assert "outside every storage" not in escape.text
    base = f"/storage/{drives.a}/results"
    for path in ("/../frozen/input.csv", "/%2e%2e/frozen/input.csv", "/x%2Finput.csv"):
        # sent as written (an HTTP client library would resolve the dot segments itself)
        assert raw_request(drives.router.port, base + path, drives.alice) == 400, path
    other = drives.url(drives.b, "data") + "/stolen.txt"
    move = httpx.request(
        "MOVE", url + "/hello.txt", headers={**auth, "Destination": other}, timeout=30
    )
    assert move.status_code == 400
    assert (drives.results / "hello.txt").exists()
    assert not (drives.data / "stolen.txt").exists()
