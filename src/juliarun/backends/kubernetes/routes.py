"""Where each job lives: the backend's namespace or its tenant's, the API paths of its Job and
pods, and the cluster-wide listing of tenants' jobs (when the credentials allow it)."""

from __future__ import annotations

import logging
from typing import Any

from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.errors import JobNotFoundError
from juliarun.specs import JobSpec


class JobRoutes:
    """Routes jobs by namespace: a job whose ``tenant`` is not ``"default"`` runs in the
    namespace named after its tenant, every other job in ``namespace``. Jobs found in a tenant's
    namespace (by submit, or by the cluster-wide listing) are remembered, so their status, pods
    and logs are read there.

    >>> routes = JobRoutes(None, "jr", cluster="kube")  # type: ignore[arg-type]
    >>> routes.jobs_path("hello"), routes.pods_path("hello-0-abcde")
    ('/apis/batch/v1/namespaces/jr/jobs/hello', '/api/v1/namespaces/jr/pods/hello-0-abcde')
    >>> routes.remember("hello", "acme")
    >>> routes.ns_of("hello"), routes.pods_path("hello-0-abcde")
    ('acme', '/api/v1/namespaces/acme/pods/hello-0-abcde')
    """

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        *,
        cluster: str = "kubernetes",
        logger: logging.Logger | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.cluster = cluster
        self.log = logger or logging.getLogger("juliarun.kubernetes")
        self.where: dict[str, str] = {}  # job name → namespace, when not ``namespace``
        self.cluster_wide: bool | None = None  # may these credentials list jobs everywhere?

    def job_namespace(self, job: JobSpec) -> str:
        """Where ``job`` runs: its tenant's namespace (named after the tenant), else the
        backend's."""
        return self.namespace if job.tenant == "default" else job.tenant

    def ns_of(self, name: str) -> str:
        """The namespace of job ``name`` as far as known (default: the backend's)."""
        return self.where.get(name, self.namespace)

    def remember(self, name: str, namespace: str) -> None:
        """Job ``name`` lives in ``namespace``."""
        if namespace != self.namespace:
            self.where[name] = namespace

    def jobs_path(self, name: str | None = None, namespace: str | None = None) -> str:
        """The API path of job ``name`` (or of the Jobs of ``namespace``)."""
        ns = namespace or (self.ns_of(name) if name else self.namespace)
        return ns_path(ns, "jobs", name, group="batch/v1")

    def pods_path(self, name: str | None = None, namespace: str | None = None) -> str:
        """The API path of pod ``name`` (or of the pods of ``namespace``)."""
        # an Indexed Job's pod is named <job>-<index>-<suffix>: it lives where its job does
        ns = namespace or (self.ns_of(name.rsplit("-", 2)[0]) if name else self.namespace)
        return ns_path(ns, "pods", name)

    def tenant_jobs(self, name: str | None = None) -> list[dict[str, Any]]:
        """juliarun's jobs in tenant namespaces other than the backend's (each in the
        namespace named by its tenant label), when the credentials may list jobs cluster-wide;
        remembers where each is."""
        if self.cluster_wide is False:
            return []
        selector = mf.selector(name) + f",{mf.TENANT_LABEL}!=default"
        try:
            listing = self.client.get("/apis/batch/v1/jobs", labelSelector=selector)
        except KubeApiError as exc:
            if exc.status != 403:
                raise
            self.cluster_wide = False  # a tenant's credentials: its own namespace only
            return []
        self.cluster_wide = True
        found = []
        for item in listing.get("items") or []:
            meta = item["metadata"]
            ns = meta.get("namespace")
            if ns == self.namespace or (meta.get("labels") or {}).get(mf.TENANT_LABEL) != ns:
                continue
            self.where[meta["name"]] = ns
            found.append(item)
        return found

    def all_jobs(self) -> list[dict[str, Any]]:
        """juliarun's Jobs in the backend's namespace and, with cluster-wide credentials, in
        every tenant's."""
        listing = self.client.get(self.jobs_path(), labelSelector=mf.selector())
        return [*(listing.get("items") or []), *self.tenant_jobs()]

    def get_job(self, name: str) -> dict[str, Any]:
        """The Job object of ``name``, wherever it runs; :class:`JobNotFoundError` if none."""
        job = self.client.get_or_none(self.jobs_path(name))
        if job is None:
            job = next(iter(self.tenant_jobs(name)), None)
        if job is None:
            raise JobNotFoundError(name, self.cluster)
        return dict(job)

    def job_pods(self, name: str) -> list[dict[str, Any]]:
        """The pods of job ``name`` (every attempt of every worker)."""
        pods = self.client.get(
            self.pods_path(namespace=self.ns_of(name)), labelSelector=mf.selector(name)
        )
        return list(pods.get("items") or [])

    def ensure_namespace(self) -> None:
        """Create the namespace (labelled as juliarun's) unless it exists."""
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.namespace, "labels": {mf.MANAGED_BY: "juliarun"}},
        }
        try:
            self.client.post("/api/v1/namespaces", body)
        except KubeApiError as exc:
            if exc.status == 409:
                return
            if exc.status != 403:
                raise
        try:
            self.client.get_or_none(f"/api/v1/namespaces/{self.namespace}")
        except KubeApiError as exc:
            if exc.status != 403:
                raise
            # a tenant's credentials may not read namespaces: every later call names it, and
            # fails with the apiserver's own reason if it is not theirs
            self.log.debug("namespace %s: not readable with these credentials", self.namespace)
