"""The Job objects specs become (pure functions: no cluster)."""

from __future__ import annotations

import json

from juliarun.backends.kubernetes.client import TokenBucket, ns_path
from juliarun.backends.kubernetes.manifests import (
    NodeTypeRule,
    Toleration,
    default_node_types,
    job_manifest,
    scale_patch,
    selector,
)
from juliarun.specs import Batch, JuliaBatch, JuliaParBatchWorkers, StorageSpec

CODE = StorageSpec(name="code", kind="host", path="/srv/code")
SCRATCH = StorageSpec(name="scratch", kind="ramdisk", size="256Mi")
REPO = StorageSpec(name="repo", kind="git", url="https://example.org/r.git")


def manifest(job, **kw):  # type: ignore[no-untyped-def]
    storage = {s.name: s for s in (CODE, SCRATCH, REPO)}
    return job_manifest(job, storage, namespace="jr", image="julia:1.5.3", **kw)


def pod(m):  # type: ignore[no-untyped-def]
    return m["spec"]["template"]["spec"]


def test_julia_batch_is_one_indexed_completion_that_fails_fast() -> None:
    m = manifest(JuliaBatch("hello", "/mnt/code/hello.jl", "code", args=["a"]))
    assert m["apiVersion"] == "batch/v1" and m["kind"] == "Job"
    assert m["metadata"]["namespace"] == "jr"
    spec = m["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 1, 1)
    assert spec["backoffLimit"] == 3
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"] == {"containerName": "main", "operator": "NotIn", "values": [0]}
    p = pod(m)
    assert p["restartPolicy"] == "Never"
    assert p["automountServiceAccountToken"] is False
    [c] = p["containers"]
    assert c["command"] == ["julia", "--startup-file=no", "--color=no", "/mnt/code/hello.jl", "a"]
    assert c["image"] == "julia:1.5.3" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["workingDir"] == "/mnt/code"
    assert c["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"memory": "1Gi"},
    }


def test_ownership_labels_and_the_spec_hash() -> None:
    job = JuliaBatch("hello", "/mnt/code/hello.jl", "code", tenant="team-a")
    m = manifest(job)
    labels = {
        "app.kubernetes.io/managed-by": "juliarun",
        "juliarun.io/job": "hello",
        "juliarun.io/tenant": "team-a",
        "juliarun.io/kind": "JuliaBatch",
    }
    assert m["metadata"]["labels"] == labels
    assert m["spec"]["template"]["metadata"]["labels"] == labels
    annotations = m["metadata"]["annotations"]
    assert annotations["juliarun.io/spec-hash"] == job.spec_hash()
    assert json.loads(annotations["juliarun.io/spec"])["script"] == "/mnt/code/hello.jl"
    assert manifest(job) == m  # a pure function: the same spec, the same object
    assert selector("hello") == "app.kubernetes.io/managed-by=juliarun,juliarun.io/job=hello"


def test_workers_are_an_elastic_indexed_job_restarting_on_failure() -> None:
    job = JuliaParBatchWorkers("w", "/mnt/code/w.jl", "code", nworkers=3, backoff_limit=2)
    m = manifest(job)
    assert (m["spec"]["completions"], m["spec"]["parallelism"]) == (3, 3)
    assert pod(m)["restartPolicy"] == "OnFailure"
    assert "podFailurePolicy" not in m["spec"]  # the API allows it only with Never
    assert m["spec"]["backoffLimit"] == 6
    assert scale_patch(5) == {"spec": {"completions": 5, "parallelism": 5}}
    env = {e["name"]: e for e in pod(m)["containers"][0]["env"]}
    assert env["JULIARUN_WORKER_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/job-completion-index']"
    )
    assert env["JULIARUN_WORKER"]["value"] == "$(JULIARUN_JOB)-$(JULIARUN_WORKER_INDEX)"
    assert env["JULIARUN_NWORKERS"]["value"] == "3"


def test_resources_gpu_and_node_type() -> None:
    job = JuliaBatch("t", "/mnt/code/t.jl", "code", cpu="2", memory="8Gi", gpu=2, node_type="gpu")
    p = pod(manifest(job))
    res = p["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "2"}
    assert res["limits"] == {"memory": "8Gi", "nvidia.com/gpu": "2"}
    assert p["nodeSelector"] == {"juliarun.io/node-type": "gpu"}
    assert p["tolerations"] == [
        {
            "key": "juliarun.io/node-type",
            "operator": "Equal",
            "value": "gpu",
            "effect": "NoSchedule",
        }
    ]


def test_a_custom_node_type_map_and_custom_labels() -> None:
    rules = {
        **default_node_types(),
        "spot": NodeTypeRule(
            labels={"cloud.example/spot": "true"},
            tolerations=[Toleration(key="cloud.example/spot", operator="Exists", effect=None)],
        ),
    }
    job = JuliaBatch(
        "s",
        "/mnt/code/s.jl",
        "code",
        resources={"node_type": "spot", "node_labels": {"zone": "a"}},
    )
    p = pod(manifest(job, node_types=rules))
    assert p["nodeSelector"] == {"cloud.example/spot": "true", "zone": "a"}
    assert p["tolerations"] == [{"key": "cloud.example/spot", "operator": "Exists"}]
    untyped = pod(manifest(JuliaBatch("u", "/mnt/code/u.jl", "code")))
    assert "nodeSelector" not in untyped and "tolerations" not in untyped


HELPERS_VOLUME = {
    "name": "juliarun-helpers",
    "downwardAPI": {
        "items": [
            {
                "path": "JuliaRun.jl",
                "fieldRef": {"fieldPath": "metadata.annotations['juliarun.io/julia-helpers']"},
            }
        ]
    },
}


def test_pods_get_the_julia_helpers_and_print_their_metrics() -> None:
    m = manifest(JuliaBatch("h", "/mnt/code/h.jl", "code"))
    annotations = m["spec"]["template"]["metadata"]["annotations"]
    assert "function record(" in annotations["juliarun.io/julia-helpers"]
    env = {e["name"]: e.get("value") for e in pod(m)["containers"][0]["env"]}
    assert env["JULIARUN_JL"] == "/opt/juliarun/JuliaRun.jl"
    assert env["JULIARUN_METRICS_STDOUT"] == "1"
    assert HELPERS_VOLUME in pod(m)["volumes"]


def test_storage_volumes_are_mounted_at_mnt() -> None:
    job = Batch("b", ["ls", "/mnt"], ["code", "scratch", "repo"], env={"A": "1"})
    m = job_manifest(
        job,
        {s.name: s for s in (CODE, SCRATCH, REPO)},
        namespace="jr",
        image="base",
        node_paths={"repo": "/home/j/storage/git/repo@HEAD"},
    )
    p = pod(m)
    assert p["volumes"] == [
        {"name": "st-code", "hostPath": {"path": "/srv/code", "type": "DirectoryOrCreate"}},
        {"name": "st-scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
        {
            "name": "st-repo",
            "hostPath": {"path": "/home/j/storage/git/repo@HEAD", "type": "Directory"},
        },
        HELPERS_VOLUME,
    ]
    c = p["containers"][0]
    assert c["command"] == ["ls", "/mnt"]
    assert c["volumeMounts"] == [
        {"name": "st-code", "mountPath": "/mnt/code"},
        {"name": "st-scratch", "mountPath": "/mnt/scratch"},
        {"name": "st-repo", "mountPath": "/mnt/repo", "readOnly": True},
        {"name": "juliarun-helpers", "mountPath": "/opt/juliarun", "readOnly": True},
    ]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["JULIARUN_STORAGE_SCRATCH"] == "/mnt/scratch"
    assert env["A"] == "1"


def test_job_image_wins_over_the_default() -> None:
    job = Batch("b", ["true"], image="localhost:5000/x:1")
    assert pod(manifest(job))["containers"][0]["image"] == "localhost:5000/x:1"


def test_rate_limit_and_paths() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(qps=10, burst=2, clock=lambda: now[0], sleep=sleep)
    waits = [bucket.take() for _ in range(4)]
    assert waits[:2] == [0.0, 0.0]
    assert [round(w, 3) for w in waits[2:]] == [0.1, 0.1]
    assert ns_path("jr", "jobs", "x", group="batch/v1") == "/apis/batch/v1/namespaces/jr/jobs/x"


def test_network_git_storage_is_cloned_by_an_init_container_at_the_resolved_commit() -> None:
    job = JuliaBatch("g", "/mnt/repo/main.jl", "repo")
    commit = "0123456789abcdef0123456789abcdef01234567"
    m = manifest(job, git_clones={"repo": (REPO.url, commit)}, git_image="registry/git:1")
    p = pod(m)
    assert {"name": "st-repo", "emptyDir": {}} in p["volumes"]
    [init] = p["initContainers"]
    assert init["name"] == "git-repo" and init["image"] == "registry/git:1"
    env = {e["name"]: e["value"] for e in init["env"]}
    assert (env["CLONE_URL"], env["CLONE_DIR"], env["CLONE_COMMIT"]) == (
        REPO.url,
        "/mnt/repo",
        commit,
    )
    # the URL travels in the environment, never in the shell text
    assert REPO.url not in " ".join(init["command"])
    assert init["volumeMounts"] == [{"name": "st-repo", "mountPath": "/mnt/repo"}]
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
    main = p["containers"][0]
    assert {"name": "st-repo", "mountPath": "/mnt/repo", "readOnly": True} in main["volumeMounts"]


def test_local_git_storage_has_no_init_container() -> None:
    m = manifest(Batch("b", ["ls"], ["repo"]), node_paths={"repo": "/n/repo"})
    assert "initContainers" not in pod(m)
    assert {"name": "st-repo", "hostPath": {"path": "/n/repo", "type": "Directory"}} in pod(m)[
        "volumes"
    ]
