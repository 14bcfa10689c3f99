"""The Azure and GCP node providers, driving the real SDK clients (azure-mgmt-compute,
google-cloud-compute) over HTTPS against a replay of the clouds' API exchanges — named
stand-ins (``tests/unit/data/providers/*.stand-in.json``), hand-written in the shapes the REST
references document, since no cloud can be reached from here. The SDKs build the URLs, serialize
the bodies, page, parse the models and raise their errors themselves; the tests check what they
sent and what the provider made of the answers."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from juliarun.errors import ConfigError
from juliarun.providers import provider_for
from juliarun.providers.azure import AzureProvider
from juliarun.providers.base import NodeProvider, ProviderError
from juliarun.providers.gcp import GcpProvider
from juliarun.specs import NodePool
from tests.unit.replay import Replay, load, replay_server

SUB = "00000000-0000-0000-0000-000000000001"
AZURE = {
    "subscription": SUB,
    "resource_group": "jr-rg",
    "scale_set": "jr-highcpu",
    "location": "westeurope",
    "vm_size": "Standard_D4s_v5",
    "image": "Canonical:ubuntu-24_04-lts:server:latest",
    "subnet": f"/subscriptions/{SUB}/resourceGroups/jr-rg/providers/Microsoft.Network/"
    "virtualNetworks/jr/subnets/nodes",
    "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJuliarunTestKeyOnly juliarun",
    "custom_data": "#cloud-config\nruncmd: [kubeadm join]\n",
}
GCP = {"project": "jr-proj", "zone": "europe-west4-a", "group": "jr-highcpu"}


def pool(provider: str, options: dict[str, str], **extra: Any) -> NodePool:
    return NodePool(
        name="highcpu",
        node_type="highcpu",
        cpu="4",
        memory="16Gi",
        max=10,
        provider=provider,  # type: ignore[arg-type]
        provider_options=options,
        **extra,
    )


class Token:
    """A fixed bearer token (the stand-in checks none; the SDK's auth policy still runs)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("stand-in-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo("stand-in-token", int(time.time()) + 3600)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replay]:
    with replay_server(tmp_path, []) as replay:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(replay.ca))
        yield replay


@pytest.fixture
def azure(server: Replay) -> AzureProvider:
    from azure.mgmt.compute import ComputeManagementClient

    client = ComputeManagementClient(Token(), SUB, base_url=server.base)  # type: ignore[arg-type]
    return AzureProvider(client, cluster="prod")


@pytest.fixture
def gcp(server: Replay) -> GcpProvider:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    client = compute_v1.InstanceGroupManagersClient(
        credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=server.base)
    )
    return GcpProvider(client)


# --- Azure: VMs by name in a Flexible scale set --------------------------------------------


def test_azure_lists_the_pools_vms_across_pages(azure: AzureProvider, server: Replay) -> None:
    assert isinstance(azure, NodeProvider)
    server.play(load("azure_virtual_machines", "nodes"))
    # untagged, deleting and other-cluster VMs of the scale set are not the pool's nodes
    assert azure.nodes(pool("azure", AZURE)) == ["highcpu-0", "highcpu-1"]
    server.check()
    assert [s.method for s in server.sent] == ["GET", "GET"]
    assert "$skiptoken=c2tpcC0y" in server.sent[1].path
    assert server.sent[0].headers["authorization"] == "Bearer stand-in-token"


def test_azure_creates_only_the_missing_vm_as_a_spot_vm_of_the_scale_set(
    azure: AzureProvider, server: Replay
) -> None:
    server.play(load("azure_virtual_machines", "create"))
    spot = pool("azure", AZURE, spot=True)
    assert azure.create_nodes(spot, ["highcpu-0", "highcpu-1", "highcpu-2"]) == ["highcpu-2"]
    server.check()
    put = server.sent[1].body
    assert put["properties"]["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    assert put["properties"]["osProfile"]["customData"] == (
        "I2Nsb3VkLWNvbmZpZwpydW5jbWQ6IFtrdWJlYWRtIGpvaW5dCg=="
    )
    nic = put["properties"]["networkProfile"]["networkInterfaceConfigurations"][0]
    assert nic["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"] == AZURE["subnet"]
    assert put["properties"]["billingProfile"] == {"maxPrice": -1}


def test_azure_deletes_only_vms_that_exist(azure: AzureProvider, server: Replay) -> None:
    server.play(load("azure_virtual_machines", "delete"))
    assert azure.delete_nodes(pool("azure", AZURE), ["highcpu-1", "highcpu-9"]) == ["highcpu-1"]
    server.check()


def test_azure_quota_refusal_is_a_provider_error_with_the_code(
    azure: AzureProvider, server: Replay
) -> None:
    server.play(load("azure_virtual_machines", "quota"))
    with pytest.raises(ProviderError) as err:
        azure.create_nodes(pool("azure", AZURE), ["highcpu-0"])
    server.check()
    assert err.value.message.startswith(
        "azure: cannot create node highcpu-0 of pool highcpu: OperationNotAllowed: Operation "
        "could not be completed as it results in exceeding approved Total Regional Cores quota"
    )
    assert "quota" in (err.value.hint or "")


def test_azure_names_every_missing_option_before_any_request(
    azure: AzureProvider, server: Replay
) -> None:
    bare = pool("azure", {"subscription": SUB, "resource_group": "jr-rg"})
    with pytest.raises(ConfigError) as err:
        azure.create_nodes(bare, ["highcpu-0"])
    assert err.value.message == (
        "azure: pool highcpu lacks provider_options scale_set, location, vm_size, image, "
        "subnet, ssh_public_key"
    )
    assert server.sent == []


# --- GCP: instances by name in a managed instance group ------------------------------------


def test_gcp_lists_the_groups_instances_across_pages(gcp: GcpProvider, server: Replay) -> None:
    assert isinstance(gcp, NodeProvider)
    server.play(load("gcp_instance_group_managers", "nodes"))
    assert gcp.nodes(pool("gcp", GCP)) == ["highcpu-0", "highcpu-1"]  # highcpu-3 is deleting
    server.check()
    assert server.sent[1].path.endswith("listManagedInstances?pageToken=p2")


def test_gcp_creates_only_the_missing_instances_in_one_call(
    gcp: GcpProvider, server: Replay
) -> None:
    server.play(load("gcp_instance_group_managers", "create"))
    names = ["highcpu-0", "highcpu-1", "highcpu-2", "highcpu-3"]
    assert gcp.create_nodes(pool("gcp", GCP), names) == ["highcpu-2", "highcpu-3"]
    server.check()


def test_gcp_deletes_only_instances_that_exist(gcp: GcpProvider, server: Replay) -> None:
    server.play(load("gcp_instance_group_managers", "delete"))
    assert gcp.delete_nodes(pool("gcp", GCP), ["highcpu-1", "highcpu-9"]) == ["highcpu-1"]
    server.check()
    assert gcp.delete_nodes(pool("gcp", GCP), []) == []  # nothing asked: no request
    assert len(server.sent) == 2


def test_gcp_quota_refusal_is_a_provider_error(gcp: GcpProvider, server: Replay) -> None:
    server.play(load("gcp_instance_group_managers", "quota"))
    with pytest.raises(ProviderError) as err:
        gcp.create_nodes(pool("gcp", GCP), ["highcpu-0"])
    server.check()
    assert err.value.message == (
        "gcp: cannot create nodes highcpu-0 of pool highcpu: 403 Quota 'CPUS' exceeded.  "
        "Limit: 24.0 in region europe-west4."
    )


def test_gcp_names_every_missing_option_before_any_request(
    gcp: GcpProvider, server: Replay
) -> None:
    with pytest.raises(ConfigError) as err:
        gcp.nodes(pool("gcp", {"project": "jr-proj"}))
    assert err.value.message == "gcp: pool highcpu lacks provider_options zone, group"
    assert server.sent == []


def service_account(directory: Path, token_uri: str) -> Path:
    """A service-account key of a throw-away RSA key, its token endpoint ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = directory / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "jr-proj",
                "private_key_id": "stand-in",
                "private_key": pem,
                "client_email": "autoscaler@jr-proj.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    return path


def test_the_factory_builds_the_gcp_provider_from_application_default_credentials(
    server: Replay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="no Application Default Credentials"):
        provider_for("gcp", GCP, kube=None, cluster="prod")
    key = service_account(tmp_path, f"{server.base}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    made = provider_for("gcp", {**GCP, "endpoint": server.base}, kube=None, cluster="prod")
    assert isinstance(made, GcpProvider)
    server.play(load("gcp_instance_group_managers", "delete")[:1])
    assert made.nodes(pool("gcp", GCP)) == ["highcpu-0", "highcpu-1"]
    server.check()
    # google-auth signs its own JWT with the service account's key (no token exchange)
    scheme, jwt = server.sent[0].headers["authorization"].split(" ", 1)
    claims = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
    assert (scheme, claims["iss"]) == ("Bearer", "autoscaler@jr-proj.iam.gserviceaccount.com")


def test_the_factory_needs_an_azure_subscription() -> None:
    with pytest.raises(ConfigError, match="subscription"):
        provider_for("azure", {}, kube=None, cluster="prod")
