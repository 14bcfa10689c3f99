"""The router on a cluster: a Deployment of ``replicas`` router pods following the routes — the
route objects (``routes.juliarun.io``) tenants write in their own namespaces, and the admin's
ConfigMap in the router's namespace — their service account allowed exactly what a router does
(create SubjectAccessReviews; list and watch route objects, get Jobs and list pods, cluster-wide,
to resolve each route's upstream; read that ConfigMap), the config and signing key in a Secret.

The pods use the node's network (``hostNetwork``) and share one port with SO_REUSEPORT: the
router must reach the identity providers and the apiserver where the node reaches them (the test
issuers listen on the node's loopback only, and a cluster without kube-proxy has no Service
address for the apiserver), reach job pods by their IPs, and be reachable from users' machines
without a LoadBalancer. Sharing the port, a replica that dies simply stops getting connections.
No container port is declared (with host networking it would be a host port, and the scheduler
would refuse a second replica on the node).

>>> objs = manifests("juliarun-router", "img:1", {"issuers": []}, '{"kty": "EC"}', replicas=2)
>>> [o["kind"] for o in objs]  # doctest: +NORMALIZE_WHITESPACE
['CustomResourceDefinition', 'Namespace', 'ServiceAccount', 'ClusterRole', 'ClusterRoleBinding',
 'Role', 'RoleBinding', 'Secret', 'Deployment']
>>> objs[-1]["spec"]["replicas"], objs[-1]["spec"]["template"]["spec"]["hostNetwork"]
(2, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from juliarun.router.config import RouterError
from juliarun.router.kube import KubeConn
from juliarun.router.objects import GROUP, PLURAL, crd_manifest

NAME = "juliarun-router"
ROUTES = "juliarun-routes"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/managed-by": "juliarun"}


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(LABELS)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def manifests(
    namespace: str,
    image: str,
    config: Mapping[str, Any],
    signing_key: str,
    *,
    replicas: int = 2,
    port: int = 8080,
    node_selector: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every object of the router in ``namespace``, in creation order (the route objects'
    CustomResourceDefinition first: it is cluster-wide and shared by every router). ``config``
    is the router config (its ``routes``, ``signing_key`` and ``kubeconfig`` are set here)."""
    cluster_name = f"{NAME}-{namespace}"
    full = {
        **config,
        "kubeconfig": None,
        "routes": [
            {"kind": "configmap", "namespace": namespace, "name": ROUTES},  # the admin's
            {"kind": "objects"},
        ],
        "signing_key": "/etc/juliarun-router/key.json",
    }
    rbac = "rbac.authorization.k8s.io"
    return [
        crd_manifest(),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, namespace)},
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "ClusterRole",
            "metadata": _meta(cluster_name),
            "rules": [
                {
                    "apiGroups": ["authorization.k8s.io"],
                    "resources": ["subjectaccessreviews"],
                    "verbs": ["create"],
                },
                {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
            ],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(cluster_name),
            "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": cluster_name},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": _meta(NAME, namespace),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": _meta(NAME, namespace),
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(NAME, namespace),
            "stringData": {"config.yaml": yaml.safe_dump(full), "key.json": signing_key},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(NAME, namespace),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": dict(LABELS)},
                    "spec": {
                        "serviceAccountName": NAME,
                        "hostNetwork": True,
                        "dnsPolicy": "ClusterFirstWithHostNet",
                        "nodeSelector": dict(node_selector or {}),
                        "terminationGracePeriodSeconds": 5,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65534,
                            "runAsGroup": 65534,
                            "fsGroup": 65534,  # the Secret's files: readable by the group only
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "router",
                                "image": image,
                                "imagePullPolicy": "IfNotPresent",
                                "args": [
                                    "--config=/etc/juliarun-router/config.yaml",
                                    "--host=0.0.0.0",
                                    f"--port={port}",
                                    "--reuse-port",
                                ],
                                "env": [
                                    {
                                        "name": "JULIARUN_ROUTER_REPLICA",
                                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                    }
                                ],
                                "readinessProbe": {
                                    "httpGet": {
                                        "path": "/.juliarun/healthz",
                                        "port": port,
                                        "host": "127.0.0.1",
                                    },
                                    "periodSeconds": 1,
                                },
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "64Mi"},
                                    "limits": {"memory": "256Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [
                                    {
                                        "name": "config",
                                        "mountPath": "/etc/juliarun-router",
                                        "readOnly": True,
                                    }
                                ],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "config",
                                "secret": {"secretName": NAME, "defaultMode": 0o440},
                            }
                        ],
                    },
                },
            },
        },
    ]


def _path(obj: Mapping[str, Any]) -> str:
    api, kind = obj["apiVersion"], obj["kind"]
    plural = {
        "CustomResourceDefinition": "customresourcedefinitions",
        "Namespace": "namespaces",
        "ServiceAccount": "serviceaccounts",
        "ClusterRole": "clusterroles",
        "ClusterRoleBinding": "clusterrolebindings",
        "Role": "roles",
        "RoleBinding": "rolebindings",
        "Secret": "secrets",
        "Deployment": "deployments",
    }[kind]
    base = "/api/v1" if api == "v1" else f"/apis/{api}"
    ns = obj["metadata"].get("namespace")
    return f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"


def apply(conn: KubeConn, objects: list[dict[str, Any]]) -> None:
    """Create each object, or replace it when it exists."""
    with conn.client(timeout=30) as http:
        for obj in objects:
            path = _path(obj)
            resp = http.post(path, json=obj)
            if resp.status_code == 409:
                name = obj["metadata"]["name"]
                current = http.get(f"{path}/{name}")
                current.raise_for_status()
                body = {**obj, "metadata": {**obj["metadata"], **_rv(current.json())}}
                resp = http.put(f"{path}/{name}", json=body)
            if resp.status_code not in (200, 201):
                raise RouterError(
                    f"router deploy: {obj['kind']} {obj['metadata']['name']}: "
                    f"{resp.status_code} {resp.text[:300]}",
                    hint="deploy with credentials that may create these objects (a cluster admin)",
                )
            if obj["kind"] == "CustomResourceDefinition":
                _established(http, f"{path}/{obj['metadata']['name']}")


def _established(
    http: Any,
    path: str,
    *,
    timeout: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Until the CustomResourceDefinition at ``path`` serves its resource."""
    deadline = clock() + timeout
    while True:
        conditions = (http.get(path).json().get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            return
        if clock() >= deadline:
            raise RouterError(f"{path} is not established after {timeout} s")
        sleep(0.1)


def _rv(current: Mapping[str, Any]) -> dict[str, str]:
    return {"resourceVersion": current["metadata"]["resourceVersion"]}


def wait_ready(
    conn: KubeConn,
    namespace: str,
    replicas: int,
    *,
    timeout: float = 120.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Until ``replicas`` router pods are ready."""
    deadline = clock() + timeout
    with conn.client(timeout=15) as http:
        while True:
            dep = http.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{NAME}").json()
            status = dep.get("status") or {}
            if (status.get("readyReplicas") or 0) >= replicas and status.get(
                "updatedReplicas", 0
            ) >= replicas:
                return
            if clock() >= deadline:
                raise RouterError(
                    f"the router in {namespace} has {status.get('readyReplicas') or 0} of "
                    f"{replicas} replicas ready after {timeout} s",
                    hint=f"kubectl -n {namespace} describe pods -l app.kubernetes.io/name={NAME}",
                )
            sleep(0.5)
