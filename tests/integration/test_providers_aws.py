"""The AWS node provider against moto's server — a named stand-in for the EC2 API, which cannot
be reached from here: boto3 speaks real HTTP to it. Launches go through an EC2 Fleet from the
pool's launch template; nodes are found by their tags, so a restarted autoscaler launches no
duplicate; terminates are idempotent."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from juliarun.providers.aws import AwsProvider
from juliarun.providers.base import NodeProvider, ProviderError
from juliarun.specs import NodePool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ec2_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's EC2 server on a free loopback port (stand-in for AWS)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = Path(sys.executable).parent / "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
            break
        except OSError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"moto_server did not start: {log.read_text()}"
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # seen on a loaded machine: it is only a stand-in, kill it
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def ec2(ec2_endpoint: str) -> Any:
    return boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=ec2_endpoint,
        aws_access_key_id="stand-in",
        aws_secret_access_key="stand-in",
    )


@pytest.fixture
def pool(ec2: Any) -> Iterator[NodePool]:
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.create_launch_template(
        LaunchTemplateName="juliarun-highcpu",
        LaunchTemplateData={"ImageId": image, "InstanceType": "c5.xlarge"},
    )
    yield NodePool(
        name="highcpu",
        node_type="highcpu",
        cpu="4",
        memory="8Gi",
        max=4,
        provider="aws",
        provider_options={"launch_template": "juliarun-highcpu"},
    )
    ec2.delete_launch_template(LaunchTemplateName="juliarun-highcpu")


def live(ec2: Any) -> dict[str, tuple[str, str]]:
    """Node-name tag → (instance type, lifecycle) of every live instance."""
    out = {}
    for reservation in ec2.describe_instances()["Reservations"]:
        for instance in reservation["Instances"]:
            if instance["State"]["Name"] not in {"pending", "running"}:
                continue
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            out[tags.get("juliarun.io/node-name", "?")] = (
                instance["InstanceType"],
                instance.get("InstanceLifecycle", "on-demand"),
            )
    return out


def test_nodes_are_launched_once_found_by_tag_and_terminated(ec2: Any, pool: NodePool) -> None:
    provider = AwsProvider(ec2, cluster="test-cluster")
    assert isinstance(provider, NodeProvider)
    names = [pool.node_name(0), pool.node_name(1)]
    assert provider.create_nodes(pool, names) == names
    assert provider.create_nodes(pool, names) == []  # a restart: found by tag, none again
    assert provider.nodes(pool) == names
    assert live(ec2) == {n: ("c5.xlarge", "on-demand") for n in names}

    other = AwsProvider(ec2, cluster="other-cluster")
    assert other.nodes(pool) == []  # the cluster tag keeps clusters apart

    assert provider.delete_nodes(pool, [names[0]]) == [names[0]]
    assert provider.delete_nodes(pool, [names[0]]) == []
    assert provider.nodes(pool) == [names[1]]
    provider.delete_nodes(pool, names)
    assert provider.nodes(pool) == []


def test_spot_pools_and_overrides_and_a_missing_template(ec2: Any, pool: NodePool) -> None:
    provider = AwsProvider(ec2, cluster="spot-cluster")
    spot = pool.model_copy(
        update={
            "name": "spotty",
            "spot": True,
            "provider_options": {**pool.provider_options, "instance_type": "c5.2xlarge"},
        }
    )
    assert provider.create_nodes(spot, ["spotty-0"]) == ["spotty-0"]
    assert live(ec2)["spotty-0"] == ("c5.2xlarge", "spot")
    provider.delete_nodes(spot, ["spotty-0"])

    bare = pool.model_copy(update={"provider_options": {}})
    with pytest.raises(ProviderError, match="names no launch template"):
        provider.create_nodes(bare, ["highcpu-9"])
    wrong = pool.model_copy(update={"provider_options": {"launch_template": "no-such"}})
    with pytest.raises(ProviderError, match="cannot launch node highcpu-9 of pool highcpu"):
        provider.create_nodes(wrong, ["highcpu-9"])
