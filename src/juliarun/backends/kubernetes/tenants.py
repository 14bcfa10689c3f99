"""Tenants: a namespace per tenant with a ResourceQuota, a LimitRange, least-privilege Roles and
a RoleBinding per user or group; and client certificates for the tenant's users, signed by the
cluster's CA through a CertificateSigningRequest.

The manifest functions are pure (spec → plain dicts, as sent); ``ensure_tenant``,
``remove_tenant`` and ``issue_credentials`` drive a :class:`~.client.KubeClient` with admin
rights. The namespace is named after the tenant, so a job with ``tenant="team-a"`` runs in
namespace ``team-a``.

>>> from juliarun.specs import TenantSpec
>>> spec = TenantSpec(name="team-a", quota={"cpu": 4, "pods": 20}, users=[{"name": "alice"}])
>>> quota_manifest(spec)["spec"]["hard"]
{'requests.cpu': '4', 'pods': '20'}
>>> [b["metadata"]["name"] for b in role_binding_manifests(spec)]
['juliarun-edit-user-alice']
>>> sorted(r for rule in role_manifest("team-a", "view")["rules"] for r in rule["resources"])
['events', 'jobs', 'pods', 'pods/log', 'resourcequotas', 'routes']
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.errors import BackendError, ConfigError
from juliarun.router.objects import GROUP as ROUTE_GROUP
from juliarun.router.objects import PLURAL as ROUTE_PLURAL
from juliarun.specs import TenantSpec, TenantUser, parse_quantity

ROLES: tuple[str, ...] = ("edit", "view")
ROLE_PREFIX = "juliarun-"
QUOTA_NAME = "juliarun-tenant"
LIMITS_NAME = "juliarun-tenant"
CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client"
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SSR_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
RBAC = "rbac.authorization.k8s.io/v1"
ADMISSION = "admissionregistration.k8s.io/v1"
POD_POLICY = "juliarun-tenant-pods"
HOST_PATHS_ANNOTATION = "juliarun.io/host-paths"
SPEC_HASH_ANNOTATION = "juliarun.io/spec-hash"

# What juliarun's backend does in a namespace, and nothing more (see KubernetesBackend):
#   jobs: submit (create), status/list (get, list), follow (watch), scale (patch), delete;
#   pods: status and tail (get, list, watch), delete --force (delete, deletecollection, and
#         patch to release the job-tracking finalizer of a pod the job controller is slow on);
#   pods/log: tail and last lines; events: the diagnosis; resourcequotas: the submit check;
#   routes.juliarun.io: expose a job's service through the router (edit writes, view reads).
_EDIT_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["create", "delete", "get", "list", "patch", "watch"],
    },
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["delete", "deletecollection", "get", "list", "patch", "watch"],
    },
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": ["get", "list"]},
    {
        "apiGroups": [ROUTE_GROUP],
        "resources": [ROUTE_PLURAL],
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
    },
]
_VIEW_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": ["get", "list"]},
    {"apiGroups": [ROUTE_GROUP], "resources": [ROUTE_PLURAL], "verbs": ["get", "list", "watch"]},
]

Action = Literal["created", "updated", "unchanged", "deleted"]


@dataclass(frozen=True)
class TenantObject:
    """One object ``ensure_tenant`` looked after, and what it did to it."""

    kind: str
    name: str
    namespace: str | None
    action: Action

    def row(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Manifests (pure)
# ---------------------------------------------------------------------------------------------


def tenant_labels(tenant: str) -> dict[str, str]:
    return {mf.MANAGED_BY: "juliarun", mf.TENANT_LABEL: tenant}


def tenant_selector(tenant: str | None = None) -> str:
    """Label selector of tenant objects (of one tenant when given)."""
    return f"{mf.MANAGED_BY}=juliarun,{mf.TENANT_LABEL}" + (f"={tenant}" if tenant else "")


def _meta(name: str, tenant: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": tenant_labels(tenant)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def namespace_manifest(spec: TenantSpec) -> dict[str, Any]:
    """The tenant's namespace; its ``juliarun.io/host-paths`` annotation lists the directories
    its pods may mount (read by :func:`pod_policy_manifests`' policy)."""
    meta = _meta(spec.name, spec.name)
    meta["annotations"] = {HOST_PATHS_ANNOTATION: ",".join(spec.host_paths)}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


# Linux capabilities a container may add under the Pod Security Standards' baseline level.
BASELINE_CAPABILITIES = (
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
)


# Sysctls a pod may set under the baseline level (namespaced, and safe for the node).
SAFE_SYSCTLS = (
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
)
# SELinux types a container may run as under the baseline level ("" is the runtime's default).
SELINUX_TYPES = ("", "container_t", "container_init_t", "container_kvm_t", "container_engine_t")
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _both_levels(check: str) -> str:
    """``check`` (about ``sc``, a securityContext) for the pod's and every container's."""
    pod = "variables.spec.securityContext"
    return (
        f"(!has({pod}) || {check.replace('sc.', pod + '.')})"
        f" && variables.containers.all(c, !has(c.securityContext)"
        f" || {check.replace('sc.', 'c.securityContext.')})"
    )


def _policy_spec() -> dict[str, Any]:
    """What a tenant's pods (and the pod templates of its Jobs) may not do: what the Pod
    Security Standards' baseline level refuses (the node's network, PID or IPC namespace,
    privileged containers, capabilities beyond the baseline set, host ports, Unconfined
    seccomp or AppArmor, SELinux users, roles and other types, an unmasked /proc, unsafe
    sysctls, Windows host processes), except that a hostPath is allowed when it is one of the
    directories its namespace's annotation lists, exactly (not below them). Checked by the
    apiserver at creation, for every creator: a member with kubectl, juliarun on their behalf,
    the Job controller making the pods."""
    caps = _cel_list(BASELINE_CAPABILITIES)
    annotations = "namespaceObject.metadata.annotations"
    return {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["pods"],
                },
                {
                    "apiGroups": ["batch"],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["jobs"],
                },
            ]
        },
        "variables": [
            {
                "name": "spec",
                "expression": "object.kind == 'Pod' ? object.spec : object.spec.template.spec",
            },
            {
                "name": "containers",
                "expression": "variables.spec.containers + (has(variables.spec.initContainers)"
                " ? variables.spec.initContainers : [])",
            },
            {
                "name": "allowed",
                "expression": f"has({annotations}) && '{HOST_PATHS_ANNOTATION}' in {annotations}"
                f" && {annotations}['{HOST_PATHS_ANNOTATION}'] != ''"
                f" ? {annotations}['{HOST_PATHS_ANNOTATION}'].split(',') : []",
            },
            {
                "name": "podAnnotations",
                "expression": "object.kind == 'Pod'"
                " ? (has(object.metadata.annotations) ? object.metadata.annotations : {})"
                " : (has(object.spec.template.metadata)"
                " && has(object.spec.template.metadata.annotations)"
                " ? object.spec.template.metadata.annotations : {})",
            },
            {
                "name": "refusedPaths",
                "expression": "has(variables.spec.volumes) ? variables.spec.volumes.filter(v,"
                " has(v.hostPath) && !(v.hostPath.path in variables.allowed))"
                ".map(v, v.hostPath.path) : []",
            },
        ],
        "validations": [
            {
                "expression": "!(has(variables.spec.hostNetwork) && variables.spec.hostNetwork)"
                " && !(has(variables.spec.hostPID) && variables.spec.hostPID)"
                " && !(has(variables.spec.hostIPC) && variables.spec.hostIPC)",
                "message": "hostNetwork, hostPID, hostIPC: a tenant's pods may not use the "
                "node's network, process or IPC namespace",
                "reason": "Forbidden",
            },
            {
                "expression": "variables.containers.all(c, !has(c.securityContext)"
                " || !has(c.securityContext.privileged) || !c.securityContext.privileged)",
                "message": "securityContext.privileged: a tenant's containers may not be "
                "privileged",
                "reason": "Forbidden",
            },
            {
                "expression": "variables.containers.all(c, !has(c.securityContext)"
                " || !has(c.securityContext.capabilities)"
                " || !has(c.securityContext.capabilities.add)"
                f" || c.securityContext.capabilities.add.all(cap, cap in {caps}))",
                "message": "securityContext.capabilities.add: a tenant's containers may add "
                "only the baseline capabilities (" + ", ".join(BASELINE_CAPABILITIES) + ")",
                "reason": "Forbidden",
            },
            {
                "expression": "variables.containers.all(c, !has(c.ports)"
                " || c.ports.all(p, !has(p.hostPort) || p.hostPort == 0))",
                "message": "ports[].hostPort: a tenant's containers may not take host ports",
                "reason": "Forbidden",
            },
            {
                "expression": _both_levels(
                    "(!has(sc.seccompProfile) || sc.seccompProfile.type != 'Unconfined')"
                ),
                "message": "securityContext.seccompProfile: a tenant's pods may not run "
                "Unconfined (RuntimeDefault or Localhost)",
                "reason": "Forbidden",
            },
            {
                "expression": _both_levels(
                    "(!has(sc.appArmorProfile) || sc.appArmorProfile.type != 'Unconfined')"
                )
                + f" && variables.podAnnotations.all(k, !k.startsWith('{APPARMOR_ANNOTATION}')"
                " || variables.podAnnotations[k] == 'runtime/default'"
                " || variables.podAnnotations[k].startsWith('localhost/'))",
                "message": "securityContext.appArmorProfile: a tenant's pods may not run "
                "Unconfined (RuntimeDefault or Localhost)",
                "reason": "Forbidden",
            },
            {
                "expression": _both_levels(
                    "(!has(sc.seLinuxOptions) || ((!has(sc.seLinuxOptions.type)"
                    f" || sc.seLinuxOptions.type in {_cel_list(SELINUX_TYPES)})"
                    " && (!has(sc.seLinuxOptions.user) || sc.seLinuxOptions.user == '')"
                    " && (!has(sc.seLinuxOptions.role) || sc.seLinuxOptions.role == '')))"
                ),
                "message": "securityContext.seLinuxOptions: a tenant's pods may set only the "
                "type, one of " + ", ".join(t for t in SELINUX_TYPES if t),
                "reason": "Forbidden",
            },
            {
                "expression": "variables.containers.all(c, !has(c.securityContext)"
                " || !has(c.securityContext.procMount)"
                " || c.securityContext.procMount == 'Default')",
                "message": "securityContext.procMount: a tenant's containers keep the Default "
                "/proc mount",
                "reason": "Forbidden",
            },
            {
                "expression": "!has(variables.spec.securityContext)"
                " || !has(variables.spec.securityContext.sysctls)"
                " || variables.spec.securityContext.sysctls.all(x, x.name in "
                + _cel_list(SAFE_SYSCTLS)
                + ")",
                "message": "securityContext.sysctls: a tenant's pods may set only the safe "
                "sysctls (" + ", ".join(SAFE_SYSCTLS) + ")",
                "reason": "Forbidden",
            },
            {
                "expression": _both_levels(
                    "(!has(sc.windowsOptions) || !has(sc.windowsOptions.hostProcess)"
                    " || !sc.windowsOptions.hostProcess)"
                ),
                "message": "securityContext.windowsOptions.hostProcess: a tenant's pods may not "
                "run as host processes",
                "reason": "Forbidden",
            },
            {
                "expression": "size(variables.refusedPaths) == 0",
                "messageExpression": "'volumes[].hostPath: ' + variables.refusedPaths.join(', ')"
                " + ' is not a directory tenant ' + namespaceObject.metadata.name"
                " + ' may mount (its host_paths: ' + (size(variables.allowed) == 0 ? 'none'"
                " : variables.allowed.join(', ')) + ')'",
                "reason": "Forbidden",
            },
        ],
    }


def pod_policy_manifests() -> list[dict[str, Any]]:
    """The ValidatingAdmissionPolicy :func:`_policy_spec` and its binding to every tenant
    namespace (by the tenant label), shared by all tenants. The policy carries a hash of its
    spec, compared on update (the apiserver fills in defaults a comparison would trip on).

    >>> policy, binding = pod_policy_manifests()
    >>> binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["key"]
    'juliarun.io/tenant'
    """
    binding_spec = {
        "policyName": POD_POLICY,
        "validationActions": ["Deny"],
        "matchResources": {
            "namespaceSelector": {
                "matchExpressions": [{"key": mf.TENANT_LABEL, "operator": "Exists"}]
            }
        },
    }
    return [
        _hashed("ValidatingAdmissionPolicy", _policy_spec()),
        _hashed("ValidatingAdmissionPolicyBinding", binding_spec),
    ]


def _hashed(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A cluster-wide admission object named :data:`POD_POLICY`, labelled as juliarun's, with
    the hash of its spec (what :func:`_apply` compares)."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": ADMISSION,
        "kind": kind,
        "metadata": {
            "name": POD_POLICY,
            "labels": {mf.MANAGED_BY: "juliarun"},
            "annotations": {SPEC_HASH_ANNOTATION: digest},
        },
        "spec": spec,
    }


def quota_hard(spec: TenantSpec) -> dict[str, str]:
    """The quota's ``hard`` map: cpu → requests.cpu; memory → requests.memory and
    limits.memory (juliarun's jobs limit memory at their request); gpu →
    requests.nvidia.com/gpu; pods; jobs → count/jobs.batch."""
    q = spec.quota
    hard: dict[str, str] = {}
    if q.cpu is not None:
        hard["requests.cpu"] = q.cpu
    if q.memory is not None:
        hard["requests.memory"] = hard["limits.memory"] = q.memory
    if q.gpu is not None:
        hard[f"requests.{mf.GPU_RESOURCE}"] = str(q.gpu)
    if q.pods is not None:
        hard["pods"] = str(q.pods)
    if q.jobs is not None:
        hard["count/jobs.batch"] = str(q.jobs)
    return hard


def quota_manifest(spec: TenantSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta(QUOTA_NAME, spec.name, spec.name),
        "spec": {"hard": quota_hard(spec)},
    }


def limit_range_manifest(spec: TenantSpec) -> dict[str, Any]:
    d = spec.defaults
    limit: dict[str, Any] = {"type": "Container"}
    default = {k: v for k, v in (("cpu", d.cpu_limit), ("memory", d.memory_limit)) if v}
    request = {k: v for k, v in (("cpu", d.cpu_request), ("memory", d.memory_request)) if v}
    if default:
        limit["default"] = default
    if request:
        limit["defaultRequest"] = request
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta(LIMITS_NAME, spec.name, spec.name),
        "spec": {"limits": [limit]},
    }


def role_manifest(tenant: str, role: str) -> dict[str, Any]:
    """Role ``juliarun-<role>``: ``edit`` (submit, list, scale, delete jobs; read pods, logs,
    events, quotas) or ``view`` (read only)."""
    rules = _EDIT_RULES if role == "edit" else _VIEW_RULES
    return {
        "apiVersion": RBAC,
        "kind": "Role",
        "metadata": _meta(f"{ROLE_PREFIX}{role}", tenant, tenant),
        "rules": [dict(r) for r in rules],
    }


def _slug(name: str) -> str:
    """A DNS-safe form of a user or group name (with a hash when anything was changed)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].strip("-") or "x"
    if slug != name:
        slug = f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"
    return slug


def binding_name(user: TenantUser) -> str:
    return f"{ROLE_PREFIX}{user.role}-{user.kind.lower()}-{_slug(user.name)}"


def role_binding_manifests(spec: TenantSpec) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": RBAC,
            "kind": "RoleBinding",
            "metadata": _meta(binding_name(user), spec.name, spec.name),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"{ROLE_PREFIX}{user.role}",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": user.kind, "name": user.name}
            ],
        }
        for user in spec.users
    ]


def tenant_manifests(spec: TenantSpec) -> list[dict[str, Any]]:
    """Every object of the tenant, in creation order."""
    return [
        namespace_manifest(spec),
        quota_manifest(spec),
        limit_range_manifest(spec),
        *(role_manifest(spec.name, role) for role in ROLES),
        *role_binding_manifests(spec),
    ]


# ---------------------------------------------------------------------------------------------
# The quota check before a submit (pure)
# ---------------------------------------------------------------------------------------------


def job_needs(manifest: Mapping[str, Any]) -> dict[str, Decimal]:
    """What a Job manifest counts against a ResourceQuota once all its workers run."""
    spec = manifest["spec"]
    workers = Decimal(int(spec.get("parallelism") or 0))
    needs: dict[str, Decimal] = {"pods": workers, "count/jobs.batch": Decimal(1)}
    for container in spec["template"]["spec"]["containers"]:
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for res, value in (resources.get(kind) or {}).items():
                key = f"{kind}.{res}"
                needs[key] = needs.get(key, Decimal(0)) + parse_quantity(str(value)) * workers
    for res in ("cpu", "memory"):  # the bare names count requests
        if f"requests.{res}" in needs:
            needs[res] = needs[f"requests.{res}"]
    return needs


def _fmt(value: Decimal) -> str:
    return format(value.normalize(), "f")


def quota_problems(
    needs: Mapping[str, Decimal], quota: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """``(resource, needed, hard)`` for each hard limit of ``quota`` the job alone exceeds.

    >>> from decimal import Decimal
    >>> q = {"spec": {"hard": {"requests.cpu": "1", "pods": "10"}}}
    >>> quota_problems({"requests.cpu": Decimal(2), "pods": Decimal(2)}, q)
    [('requests.cpu', '2', '1')]
    """
    hard = (quota.get("spec") or {}).get("hard") or {}
    out: list[tuple[str, str, str]] = []
    for res, limit in sorted(hard.items()):
        need = needs.get(res)
        if need is not None and need > parse_quantity(str(limit)):
            out.append((res, _fmt(need), str(limit)))
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _path(body: Mapping[str, Any], name: str | None = None) -> str:
    kind = body["kind"]
    ns = body["metadata"].get("namespace")
    if kind == "Namespace":
        return "/api/v1/namespaces" + (f"/{name}" if name else "")
    if kind in {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}:
        plural = {"ValidatingAdmissionPolicy": "validatingadmissionpolicies"}.get(
            kind, "validatingadmissionpolicybindings"
        )
        return f"/apis/{ADMISSION}/{plural}" + (f"/{name}" if name else "")
    if kind in {"Role", "RoleBinding"}:
        return ns_path(ns, kind.lower() + "s", name, group=RBAC)
    plural = {"ResourceQuota": "resourcequotas", "LimitRange": "limitranges"}[kind]
    return ns_path(ns, plural, name)


def _quantities_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_quantities_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_quantities_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str) and a != b:
        try:
            return parse_quantity(a) == parse_quantity(b)
        except ValueError:
            return False
    return bool(a == b)


def _desired_part(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields ``ensure_tenant`` owns (compared to decide whether to update)."""
    part: dict[str, Any] = {"labels": body["metadata"].get("labels") or {}}
    if body["kind"] == "Namespace" or SPEC_HASH_ANNOTATION in _annotations(body):
        part["annotations"] = _annotations(body)
        return part  # a hashed spec is compared by its hash
    for key in ("spec", "rules", "roleRef", "subjects"):
        if key in body and body["kind"] != "Namespace":
            part[key] = body[key]
    return part


def _annotations(body: Mapping[str, Any]) -> dict[str, str]:
    return dict(body["metadata"].get("annotations") or {})


def _owned(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    want = _desired_part(desired)
    labels = current["metadata"].get("labels") or {}
    part: dict[str, Any] = {"labels": {k: labels.get(k) for k in want["labels"]}}
    if "annotations" in want:
        annotations = _annotations(current)
        part["annotations"] = {k: annotations.get(k) for k in want["annotations"]}
    for key in want:
        if key not in ("labels", "annotations"):
            part[key] = current.get(key)
            if key == "spec" and isinstance(part[key], dict):  # server defaults aside
                part[key] = {k: part[key].get(k) for k in desired["spec"]}
    return part


def _apply(client: KubeClient, body: dict[str, Any]) -> Action:
    """Create ``body``; if it exists, bring it to the desired state (409 → update)."""
    name = body["metadata"]["name"]
    try:
        client.post(_path(body), body)
        return "created"
    except KubeApiError as exc:
        if exc.status != 409:
            raise
    current = client.get(_path(body, name))
    if _quantities_equal(_owned(current, body), _desired_part(body)):
        return "unchanged"
    if body["kind"] == "Namespace":
        meta = {k: body["metadata"][k] for k in ("labels", "annotations") if k in body["metadata"]}
        client.merge_patch(_path(body, name), {"metadata": meta})
        return "updated"
    if body["kind"] == "RoleBinding" and current.get("roleRef") != body["roleRef"]:
        client.delete(_path(body, name))  # roleRef is immutable: replace the binding
        client.post(_path(body), body)
        return "updated"
    replacement = {**body, "metadata": {**body["metadata"]}}
    replacement["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    client.request("PUT", _path(body, name), body=replacement)
    return "updated"


def wait_for_pod_policy(
    client: KubeClient,
    namespace: str,
    *,
    timeout: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once the apiserver enforces the pod policy in ``namespace``: it learns of a new
    policy, binding or namespace a moment after they are written, and a pod made in that
    moment would not be checked. Probed with a dry run (nothing is created) of a pod on the
    node's network, which the policy refuses."""
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "juliarun-policy-probe"},
        "spec": {"hostNetwork": True, "containers": [{"name": "c", "image": "pause"}]},
    }
    deadline = clock() + timeout
    while True:
        try:
            client.request("POST", ns_path(namespace, "pods"), query={"dryRun": "All"}, body=probe)
        except KubeApiError as exc:
            if exc.status == 403 and POD_POLICY in str(exc.body.get("message")):
                return
            raise
        if clock() >= deadline:
            raise BackendError(
                f"the pod policy {POD_POLICY!r} is not enforced in namespace {namespace!r} "
                f"after {timeout:.0f} s",
                hint="the apiserver needs ValidatingAdmissionPolicy (Kubernetes 1.30 or later); "
                f"see `kubectl get validatingadmissionpolicy {POD_POLICY} -o yaml`",
            )
        sleep(0.2)


def ensure_tenant(
    client: KubeClient,
    spec: TenantSpec,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[TenantObject]:
    """Create (or bring to ``spec``) the tenant's namespace, ResourceQuota, LimitRange, Roles
    ``juliarun-edit`` / ``juliarun-view`` and one RoleBinding per user or group; bindings of
    users no longer listed are deleted; returns what was done to each. The pod policy every
    tenant namespace is bound to (:func:`pod_policy_manifests`, shared, so not in the list) is
    made or brought up to date first. Idempotent: a second run reports every object
    ``unchanged``. A namespace of that name that juliarun does not manage is refused."""
    existing = client.get_or_none(f"/api/v1/namespaces/{spec.name}")
    if existing is not None:
        labels = existing["metadata"].get("labels") or {}
        if labels.get(mf.MANAGED_BY) != "juliarun" or labels.get(mf.TENANT_LABEL) != spec.name:
            raise ConfigError(
                f"namespace {spec.name!r} exists and is not juliarun tenant {spec.name!r}",
                hint="choose another tenant name, or label the namespace "
                f"{mf.MANAGED_BY}=juliarun,{mf.TENANT_LABEL}={spec.name} to adopt it",
            )
        if existing["metadata"].get("deletionTimestamp"):
            raise BackendError(
                f"namespace {spec.name!r} is being deleted",
                hint="wait until it is gone, then create the tenant again",
            )
    # the pod policy, shared by all tenants, first: no pod of the tenant before it holds
    for body in pod_policy_manifests():
        _apply(client, body)
    done: list[TenantObject] = []
    for body in tenant_manifests(spec):
        action = _apply(client, body)
        done.append(
            TenantObject(
                body["kind"], body["metadata"]["name"], body["metadata"].get("namespace"), action
            )
        )
    wait_for_pod_policy(client, spec.name, clock=clock, sleep=sleep)
    wanted = {b["metadata"]["name"] for b in role_binding_manifests(spec)}
    bindings = client.get(
        ns_path(spec.name, "rolebindings", group=RBAC), labelSelector=tenant_selector(spec.name)
    )
    for item in bindings.get("items") or []:
        name = item["metadata"]["name"]
        if name not in wanted:
            client.delete(ns_path(spec.name, "rolebindings", name, group=RBAC))
            done.append(TenantObject("RoleBinding", name, spec.name, "deleted"))
    return done


def who_am_i(client: KubeClient) -> tuple[str, list[str]]:
    """The user name and groups the apiserver sees for ``client``'s credentials (a
    SelfSubjectReview): the names a tenant's members are given, e.g. ``oidc1:alice`` in
    ``oidc1:team-a``."""
    review = client.post(
        SSR_PATH, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    info = (review.get("status") or {}).get("userInfo") or {}
    return str(info.get("username") or ""), [str(g) for g in info.get("groups") or []]


def remove_tenant(
    client: KubeClient,
    tenant: str,
    *,
    wait: float = 0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Delete the tenant's namespace (and with it its jobs, quota, roles and bindings);
    ``False`` when there is none. ``wait`` seconds for it to be gone (0: do not wait). Only a
    namespace labelled as this juliarun tenant is deleted."""
    path = f"/api/v1/namespaces/{tenant}"
    current = client.get_or_none(path)
    if current is None:
        return False
    labels = current["metadata"].get("labels") or {}
    if labels.get(mf.MANAGED_BY) != "juliarun" or labels.get(mf.TENANT_LABEL) != tenant:
        raise ConfigError(f"namespace {tenant!r} is not a juliarun tenant; not deleting it")
    try:
        client.delete(path, {"propagationPolicy": "Background"})
    except KubeApiError as exc:
        if exc.status != 404:
            raise
    deadline = clock() + wait
    while wait and client.get_or_none(path) is not None:
        if clock() >= deadline:
            raise BackendError(
                f"namespace {tenant!r} still exists after {wait:g}s",
                hint=f"run `kubectl get namespace {tenant} -o yaml` to see what holds it",
            )
        sleep(0.5)
    return True


def _cluster_entry(client: KubeClient) -> dict[str, Any]:
    conf = client.api_client.configuration
    cluster: dict[str, Any] = {"server": str(conf.host)}
    if conf.ssl_ca_cert:
        ca = Path(conf.ssl_ca_cert).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    elif not conf.verify_ssl:
        cluster["insecure-skip-tls-verify"] = True
    return cluster


def issue_credentials(
    client: KubeClient,
    tenant: str,
    user: str,
    *,
    groups: tuple[str, ...] = (),
    expiration: int = 86400,
    timeout: float = 60,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """A kubeconfig (a plain dict, for a ``KubernetesCluster`` block's ``SecretDict``) for
    ``user`` (certificate CN; ``groups`` its O) in ``tenant``'s namespace, on the same server.

    The key is made here (ECDSA P-256, never sent); a CertificateSigningRequest for signer
    ``kubernetes.io/kube-apiserver-client`` is created, approved with this client's (admin)
    rights, its certificate read once the controller-manager signed it, and the request
    deleted. What the user may do is decided by the tenant's RoleBindings."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .sign(key, hashes.SHA256())
    )
    name = f"juliarun-{tenant}-{_slug(user)}-{uuid.uuid4().hex[:8]}"[:253]
    body = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "labels": tenant_labels(tenant)},
        "spec": {
            "request": base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode(),
            "signerName": CLIENT_SIGNER,
            "expirationSeconds": max(600, expiration),
            "usages": ["client auth", "digital signature"],
        },
    }
    client.post(CSR_PATH, body)
    try:
        current = client.get(f"{CSR_PATH}/{name}")
        current.setdefault("status", {})["conditions"] = [
            {
                "type": "Approved",
                "status": "True",
                "reason": "JuliarunTenant",
                "message": f"client certificate for {user} in tenant {tenant}",
            }
        ]
        client.request("PUT", f"{CSR_PATH}/{name}/approval", body=current)
        deadline = clock() + timeout
        while True:
            status = client.get(f"{CSR_PATH}/{name}").get("status") or {}
            denied = [
                c for c in status.get("conditions") or [] if c["type"] in {"Denied", "Failed"}
            ]
            if denied:
                raise BackendError(
                    f"the certificate for {user!r} was not issued: {denied[0].get('message')}",
                    hint=f"run `kubectl describe csr {name}`",
                )
            if status.get("certificate"):
                cert = status["certificate"]
                break
            if clock() >= deadline:
                raise BackendError(
                    f"the certificate for {user!r} was not signed within {timeout:g}s",
                    hint="the controller-manager signs kube-apiserver-client requests only "
                    "with --cluster-signing-cert-file/--cluster-signing-key-file set",
                )
            sleep(0.2)
    finally:
        try:
            client.delete(f"{CSR_PATH}/{name}")
        except KubeApiError as exc:
            if exc.status != 404:
                raise
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cluster = _cluster_entry(client)
    context = f"{user}@{tenant}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "juliarun", "cluster": cluster}],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": cert,
                    "client-key-data": base64.b64encode(key_pem).decode(),
                },
            }
        ],
        "contexts": [
            {"name": context, "context": {"cluster": "juliarun", "user": user, "namespace": tenant}}
        ],
        "current-context": context,
    }
