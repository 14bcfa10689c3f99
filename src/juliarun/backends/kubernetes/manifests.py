"""Pure functions from a job spec to the Kubernetes objects that run it (plain dicts, as sent).

Every job becomes one ``batch/v1`` Job in Indexed completion mode: worker ``i`` is completion
index ``i`` (pod label ``batch.kubernetes.io/job-completion-index``), so worker ids are stable
(``<job>-<i>``) across pod retries. ``JuliaBatch`` and ``Batch`` run one index;
``JuliaParBatchWorkers`` runs ``nworkers`` with ``completions == parallelism``, which an Indexed
Job may change together while it runs (elastic Indexed Jobs, GA in Kubernetes 1.31) — that is
``scale``.

>>> from juliarun.specs import JuliaBatch, StorageSpec
>>> job = JuliaBatch("hello", "/mnt/code/hello.jl", "code", node_type="highmem")
>>> code = StorageSpec(name="code", kind="host", path="/srv/code")
>>> m = job_manifest(job, {"code": code}, namespace="jr", image="julia:1.5.3")
>>> m["metadata"]["labels"]["juliarun.io/job"], m["spec"]["completionMode"]
('hello', 'Indexed')
>>> pod = m["spec"]["template"]["spec"]
>>> pod["nodeSelector"], pod["containers"][0]["command"][-1]
({'juliarun.io/node-type': 'highmem'}, '/mnt/code/hello.jl')
>>> [r["action"] for r in m["spec"]["podFailurePolicy"]["rules"]]
['Ignore', 'FailJob']
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from juliarun.specs import Batch, JobSpec, JuliaParBatchWorkers, StorageSpec

MANAGED_BY = "app.kubernetes.io/managed-by"
JOB_LABEL = "juliarun.io/job"
TENANT_LABEL = "juliarun.io/tenant"
KIND_LABEL = "juliarun.io/kind"
NODE_TYPE_LABEL = "juliarun.io/node-type"
INTERRUPTIBLE_LABEL = "juliarun.io/interruptible"  # "false": never remove the pod's node
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
PLACEMENT_GATE = "juliarun.io/placement"  # pods wait for juliarun's placement controller
PLACEMENT_ANNOTATION = "juliarun.io/placement"  # on a Job: where it was placed, or why it waits
SPEC_HASH = "juliarun.io/spec-hash"
SPEC = "juliarun.io/spec"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
MAIN = "main"
GPU_RESOURCE = "nvidia.com/gpu"
JULIA_HELPERS = "juliarun.io/julia-helpers"
HELPERS_DIR = "/opt/juliarun"
STORAGE_LABEL = "juliarun.io/storage"
PREWARM_LABEL = "juliarun.io/prewarm"
BUNDLE_VOLUME = "juliarun-bundle"
GIT_PREFIX = "git-"
DEFAULT_GIT_IMAGE = "alpine/git:latest"
# The clone an init container makes: the URL, directory and commit come from its environment,
# never spliced into the shell text (and not as GIT_* variables: GIT_DIR would redirect git).
GIT_CLONE_SCRIPT = (
    'git clone --quiet --no-checkout -- "$CLONE_URL" "$CLONE_DIR" && git -C "$CLONE_DIR"'
    ' -c advice.detachedHead=false checkout --quiet --detach "$CLONE_COMMIT"'
)
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCP_LIKE = re.compile(r"^[^/\s:]+@[^/\s:]+:")


def is_remote_git(url: str) -> bool:
    """Whether a pod can clone ``url`` itself (a network URL), as opposed to a path or
    ``file://`` URL that exists only on the machine juliarun runs on.

    >>> [is_remote_git(u) for u in ["https://h/r.git", "git@h:r.git", "/srv/r", "file:///srv/r"]]
    [True, True, False, False]
    """
    if url.startswith("file://"):
        return False
    return bool(_URL_SCHEME.match(url) or _SCP_LIKE.match(url))


def git_init_container(name: str, url: str, commit: str, image: str) -> dict[str, Any]:
    """The init container that clones ``url`` at ``commit`` into the storage's ``emptyDir``
    (mounted at ``/mnt/<name>``); on failure the kubelet keeps the tail of its output as the
    termination message, which the status diagnosis reports.

    >>> c = git_init_container("code", "https://git.example/code.git", "0123abc", "alpine/git")
    >>> c["name"], c["command"][:2], c["volumeMounts"][0]["mountPath"]
    ('git-code', ['sh', '-c'], '/mnt/code')
    """
    return {
        "name": f"{GIT_PREFIX}{name}",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", GIT_CLONE_SCRIPT],
        "env": [
            {"name": "CLONE_URL", "value": url},
            {"name": "CLONE_DIR", "value": f"/mnt/{name}"},
            {"name": "CLONE_COMMIT", "value": commit},
            {"name": "GIT_TERMINAL_PROMPT", "value": "0"},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": f"st-{name}", "mountPath": f"/mnt/{name}"}],
    }


QUEUE_SECRET_ENV = "JULIARUN_QUEUE_SECRET"


def queue_secret_env(env: Mapping[str, str]) -> list[dict[str, Any]]:
    """A job given a Kubernetes queue's ``env`` names the Secret of its broker
    (``JULIARUN_QUEUE_SECRET``): its pods read the user and password from that Secret, so the
    password is never in the Job object.

    >>> [e["name"] for e in queue_secret_env({"JULIARUN_QUEUE_SECRET": "juliarun-queue-mq"})]
    ['JULIARUN_QUEUE_USER', 'JULIARUN_QUEUE_PASSWORD']
    >>> queue_secret_env({})
    []
    """
    secret = env.get(QUEUE_SECRET_ENV)
    if not secret:
        return []
    return [
        {
            "name": f"JULIARUN_QUEUE_{key.upper()}",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
        }
        for key in ("user", "password")
        if f"JULIARUN_QUEUE_{key.upper()}" not in env
    ]


def julia_helpers() -> str:
    """The source of ``JuliaRun.jl`` (projected into every pod at ``$JULIARUN_JL``)."""
    from importlib.resources import files

    return files("juliarun").joinpath("julia/JuliaRun.jl").read_text()


class Toleration(BaseModel):
    """A taint the pods of a node type tolerate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="Taint key.")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="Equal or Exists.")
    value: str | None = Field(None, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        "NoSchedule", description="The taint effect tolerated (None: every effect)."
    )

    def manifest(self) -> dict[str, str]:
        out = {"key": self.key, "operator": self.operator}
        if self.value is not None and self.operator == "Equal":
            out["value"] = self.value
        if self.effect:
            out["effect"] = self.effect
        return out


class NodeTypeRule(BaseModel):
    """How a node type (``gpu``, ``spot``, ``highmem``, ``highcpu``) maps onto the cluster: the
    labels its nodes carry (the pods' nodeSelector), the taints its pods tolerate, and the
    extended resource a job's ``gpu`` count requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: dict[str, str] = Field(description="Labels every node of the type carries.")
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints of the type's nodes that its pods tolerate."
    )
    gpu_resource: str = Field(GPU_RESOURCE, description="Extended resource for `gpu`.")


NODE_TYPES: tuple[str, ...] = ("gpu", "spot", "highmem", "highcpu")


def default_node_types() -> dict[str, NodeTypeRule]:
    """Each type: label ``juliarun.io/node-type=<type>``, taint ``juliarun.io/node-type=<type>:
    NoSchedule`` tolerated."""
    return {
        t: NodeTypeRule(
            labels={NODE_TYPE_LABEL: t},
            tolerations=[Toleration(key=NODE_TYPE_LABEL, value=t, effect="NoSchedule")],
        )
        for t in NODE_TYPES
    }


def ownership_labels(job: JobSpec) -> dict[str, str]:
    """The labels every object made for ``job`` carries (cleanup and listing go by them)."""
    labels = {
        MANAGED_BY: "juliarun",
        JOB_LABEL: job.name,
        TENANT_LABEL: job.tenant,
        KIND_LABEL: job.kind,
    }
    if job.resources.node_type:
        labels[NODE_TYPE_LABEL] = job.resources.node_type
    return labels


def pod_labels(job: JobSpec, labels: Mapping[str, str]) -> dict[str, str]:
    """The labels of the job's pods: ``labels``, and ``juliarun.io/interruptible: "false"``
    for a job that must not be interrupted (the cluster autoscaler keeps its nodes)."""
    out = dict(labels)
    if not job.interruptible:
        out[INTERRUPTIBLE_LABEL] = "false"
    return out


def pod_annotations(job: JobSpec) -> dict[str, str]:
    """The annotations of the job's pods: the Julia helpers, and for a job that must not be
    interrupted ``cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`` (which the
    Kubernetes cluster-autoscaler honours too).

    >>> from juliarun.specs import Batch
    >>> pod_annotations(Batch("b", command=["true"], interruptible=False))[SAFE_TO_EVICT]
    'false'
    """
    out = {JULIA_HELPERS: julia_helpers()}
    if not job.interruptible:
        out[SAFE_TO_EVICT] = "false"
    return out


def selector(name: str | None = None) -> str:
    """The label selector of juliarun's objects (of one job when ``name`` is given)."""
    base = f"{MANAGED_BY}=juliarun"
    return f"{base},{JOB_LABEL}={name}" if name else base


def env_name(storage: str) -> str:
    return f"JULIARUN_STORAGE_{storage.upper().replace('-', '_')}"


def pvc_name(spec: StorageSpec) -> str:
    """The PersistentVolumeClaim of a ``volume`` storage (one per namespace)."""
    return f"juliarun-{spec.name}"


def pvc_manifest(spec: StorageSpec, namespace: str) -> dict[str, Any]:
    """The labelled PersistentVolumeClaim of a ``volume`` storage.

    >>> spec = StorageSpec(name="db", kind="volume", size="1Gi", storage_class="ssd")
    >>> pvc = pvc_manifest(spec, "jr")
    >>> pvc["metadata"]["name"], pvc["spec"]["storageClassName"], pvc["spec"]["accessModes"]
    ('juliarun-db', 'ssd', ['ReadWriteOnce'])
    """
    body: dict[str, Any] = {
        "accessModes": [spec.access_mode or "ReadWriteOnce"],
        "volumeMode": spec.volume_mode or "Filesystem",
        "resources": {"requests": {"storage": spec.size}},
    }
    if spec.storage_class:
        body["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": pvc_name(spec),
            "namespace": namespace,
            "labels": {MANAGED_BY: "juliarun", STORAGE_LABEL: spec.name},
        },
        "spec": body,
    }


def storage_volume(
    spec: StorageSpec, node_path: str | None = None, *, cloned: bool = False
) -> dict[str, Any]:
    """The pod volume of one storage: host → hostPath (created if missing), ramdisk → a
    memory-backed emptyDir with its size limit, volume → its PersistentVolumeClaim, git → an
    ``emptyDir`` an init container clones into when ``cloned``, else hostPath of the checkout
    ``node_path`` made on the node (read-only mount either way).

    >>> storage_volume(StorageSpec(name="scratch", kind="ramdisk", size="64Mi"))
    {'name': 'st-scratch', 'emptyDir': {'medium': 'Memory', 'sizeLimit': '64Mi'}}
    """
    volume: dict[str, Any] = {"name": f"st-{spec.name}"}
    if spec.kind == "ramdisk":
        volume["emptyDir"] = {"medium": "Memory", **({"sizeLimit": spec.size} if spec.size else {})}
    elif spec.kind == "volume":
        volume["persistentVolumeClaim"] = {
            "claimName": pvc_name(spec),
            **({"readOnly": True} if spec.access_mode == "ReadOnlyMany" else {}),
        }
    elif spec.kind == "host":
        volume["hostPath"] = {"path": spec.path, "type": "DirectoryOrCreate"}
    elif cloned:
        volume["emptyDir"] = {}
    else:
        volume["hostPath"] = {"path": node_path or "", "type": "Directory"}
    return volume


def command(job: JobSpec, julia: str = "julia") -> list[str]:
    if isinstance(job, Batch):
        return list(job.command)
    script: str = getattr(job, "script", "")
    args: list[str] = list(getattr(job, "args", []))
    return [julia, "--startup-file=no", "--color=no", script, *args]


def worker_count(job: JobSpec) -> int:
    return job.nworkers if isinstance(job, JuliaParBatchWorkers) else 1


def pod_failure_policy() -> dict[str, Any]:
    """For ``restart="Never"``: a disruption (preemption, eviction, node drain — pod condition
    ``DisruptionTarget``) is retried without counting against ``backoffLimit``; any non-zero
    exit of the ``main`` container is the program's own failure — deterministic, retrying
    runs the same code on the same data — and fails the whole Job at once."""
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": MAIN, "operator": "NotIn", "values": [0]},
            },
        ]
    }


def job_manifest(
    job: JobSpec,
    storage: Mapping[str, StorageSpec],
    *,
    namespace: str,
    image: str,
    node_types: Mapping[str, NodeTypeRule] | None = None,
    node_paths: Mapping[str, str] | None = None,
    git_clones: Mapping[str, tuple[str, str]] | None = None,
    git_image: str = DEFAULT_GIT_IMAGE,
    cluster: str = "kubernetes",
    julia: str = "julia",
    kill_grace: float = 10,
    bundle: tuple[str, str] | None = None,
    gated: bool = False,
) -> dict[str, Any]:
    """The ``batch/v1`` Job that runs ``job`` in ``namespace``. With ``gated`` its pods carry
    the scheduling gate ``juliarun.io/placement``: juliarun's placement controller places the
    job whole, then removes the gate. ``storage`` maps each name the
    job uses to its spec; ``node_paths`` gives git checkouts' directories on the node;
    ``git_clones`` the git storage that init containers of ``git_image`` clone instead, as
    ``name → (url, commit)``;
    ``bundle`` is the package bundle address ``(path on the node, root in the pod)``, mounted
    read-only at the root it was compiled for."""
    rules = dict(node_types) if node_types is not None else default_node_types()
    res = job.resources
    n = worker_count(job)
    labels = ownership_labels(job)

    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, str]] = []
    gpu_resource = GPU_RESOURCE
    if res.node_type:
        rule = rules.get(res.node_type) or default_node_types()[res.node_type]
        node_selector.update(rule.labels)
        tolerations = [t.manifest() for t in rule.tolerations]
        gpu_resource = rule.gpu_resource
    node_selector.update(res.node_labels)

    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if res.gpu:
        requests[gpu_resource] = limits[gpu_resource] = str(res.gpu)

    env: list[dict[str, Any]] = [
        {"name": "JULIARUN_JOB", "value": job.name},
        {
            "name": "JULIARUN_WORKER_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{INDEX_LABEL}']"}},
        },
        {"name": "JULIARUN_WORKER", "value": "$(JULIARUN_JOB)-$(JULIARUN_WORKER_INDEX)"},
        {"name": "JULIARUN_NWORKERS", "value": str(n)},
        {"name": "JULIARUN_CLUSTER", "value": cluster},
        {"name": "JULIARUN_MNT", "value": "/mnt"},
        # JuliaRun.record writes `##juliarun-metric <line protocol>` to stdout; the collector
        # turns those lines into metric points (see juliarun.backends.kubernetes.collector).
        {"name": "JULIARUN_JL", "value": f"{HELPERS_DIR}/JuliaRun.jl"},
        {"name": "JULIARUN_METRICS_STDOUT", "value": "1"},
    ]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    init_containers: list[dict[str, Any]] = []
    clones = git_clones or {}
    for name in job.storage:
        st = storage[name]
        volume = storage_volume(st, (node_paths or {}).get(name), cloned=name in clones)
        volumes.append(volume)
        if st.kind == "git" and name in clones:
            url, commit = clones[name]
            init_containers.append(git_init_container(name, url, commit, git_image))
        if st.kind == "volume" and st.volume_mode == "Block":
            devices.append({"name": volume["name"], "devicePath": f"/mnt/{name}"})
        else:
            mount = {"name": volume["name"], "mountPath": f"/mnt/{name}"}
            if st.kind == "git" or (st.kind == "volume" and st.access_mode == "ReadOnlyMany"):
                mount["readOnly"] = True
            mounts.append(mount)
        env.append({"name": env_name(name), "value": f"/mnt/{name}"})
    if bundle is not None:
        path, root = bundle
        volumes.append({"name": BUNDLE_VOLUME, "hostPath": {"path": path, "type": "Directory"}})
        mounts.append({"name": BUNDLE_VOLUME, "mountPath": root, "readOnly": True})
        env += [
            {"name": "JULIA_DEPOT_PATH", "value": f"{root}/depot:"},
            {"name": "JULIA_PROJECT", "value": f"{root}/env"},
        ]
    env += [{"name": k, "value": v} for k, v in sorted(job.env.items())]
    env += queue_secret_env(job.env)
    # The helpers travel as a pod annotation projected by the downward API: no ConfigMap.
    volumes.append(
        {
            "name": "juliarun-helpers",
            "downwardAPI": {
                "items": [
                    {
                        "path": "JuliaRun.jl",
                        "fieldRef": {"fieldPath": f"metadata.annotations['{JULIA_HELPERS}']"},
                    }
                ]
            },
        }
    )
    mounts.append({"name": "juliarun-helpers", "mountPath": HELPERS_DIR, "readOnly": True})

    container: dict[str, Any] = {
        "name": MAIN,
        "image": job.image or image,
        "imagePullPolicy": "IfNotPresent",
        "command": command(job, julia),
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
    }
    if devices:
        container["volumeDevices"] = devices
    if job.storage:
        container["workingDir"] = f"/mnt/{job.storage[0]}"
    pod_spec: dict[str, Any] = {
        "restartPolicy": job.restart,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": round(kill_grace),
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if gated:
        pod_spec["schedulingGates"] = [{"name": PLACEMENT_GATE}]

    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": n,
        "parallelism": n,
        # OnFailure restarts containers in place; the Job counts every restart of every pod,
        # so the per-worker limit is spread over the workers it starts with.
        "backoffLimit": job.backoff_limit * max(n, 1)
        if job.restart == "OnFailure"
        else job.backoff_limit,
        "template": {
            "metadata": {
                "labels": pod_labels(job, labels),
                "annotations": pod_annotations(job),
            },
            "spec": pod_spec,
        },
    }
    if job.restart == "Never":  # the API allows a podFailurePolicy only with Never
        job_spec["podFailurePolicy"] = pod_failure_policy()
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job.name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                SPEC_HASH: job.spec_hash(),
                SPEC: json.dumps(job.model_dump(mode="json"), sort_keys=True),
            },
        },
        "spec": job_spec,
    }


def prewarm_daemonset(
    image: str,
    name: str,
    namespace: str,
    rule: NodeTypeRule | None = None,
    command: tuple[str, ...] = ("sleep", "infinity"),
) -> dict[str, Any]:
    """A DaemonSet whose pods pull ``image`` onto every node (of the node type ``rule``) and
    sleep: a pod Ready on a node means the image is there.

    >>> ds = prewarm_daemonset("julia:1.5.3", "prewarm-x", "jr", default_node_types()["gpu"])
    >>> pod = ds["spec"]["template"]["spec"]
    >>> pod["nodeSelector"], pod["containers"][0]["image"]
    ({'juliarun.io/node-type': 'gpu'}, 'julia:1.5.3')
    """
    labels = {MANAGED_BY: "juliarun", PREWARM_LABEL: name}
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": "prewarm",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": list(command),
                "resources": {
                    "requests": {"cpu": "1m", "memory": "8Mi"},
                    "limits": {"memory": "64Mi"},
                },
            }
        ],
    }
    if rule is not None:
        pod_spec["nodeSelector"] = dict(rule.labels)
        if rule.tolerations:
            pod_spec["tolerations"] = [t.manifest() for t in rule.tolerations]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def scale_patch(workers: int) -> dict[str, Any]:
    """The merge patch that changes an elastic Indexed Job's worker count."""
    return {"spec": {"completions": workers, "parallelism": workers}}
