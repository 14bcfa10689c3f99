"""The Docker engine as juliarun uses it: how to connect (also from a job's supervisor process),
the labels and names of what juliarun creates, images (present or pullable), GPUs.

Every container carries ``app.kubernetes.io/managed-by: juliarun`` plus the job, tenant,
worker, cluster and a *scope* label; the scope (a hash of ``JULIARUN_HOME`` and the cluster
name) keeps jobs of the same name from two homes apart on one engine:

>>> names = Names(scope("/srv/juliarun", "docker"))
>>> names.container("hello-0")
'juliarun-e071e03f-hello-0'
>>> image_registry("localhost:5000/juliarun/julia:1.5.3"), image_registry("julia:1.10")
('localhost:5000', 'docker.io')
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
import docker.errors
import requests
from pydantic import SecretStr

from juliarun.errors import BackendError, ConfigError, SpecError

MANAGED_BY = "app.kubernetes.io/managed-by"
JOB = "juliarun.io/job"
TENANT = "juliarun.io/tenant"
WORKER = "juliarun.io/worker"
CLUSTER = "juliarun.io/cluster"
SCOPE = "juliarun.io/scope"
UID = "juliarun.io/uid"
ATTEMPT = "juliarun.io/attempt"

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
T = TypeVar("T")


def scope(home: str | os.PathLike[str], cluster: str) -> str:
    """Eight hex digits naming one juliarun home and cluster on a shared engine."""
    return hashlib.sha256(f"{os.fspath(home)}\0{cluster}".encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Names:
    """Names and label selectors of what one juliarun home/cluster creates on the engine."""

    scope: str

    def container(self, worker_id: str) -> str:
        return f"juliarun-{self.scope}-{worker_id}"

    def job_selector(self, job: str) -> dict[str, list[str]]:
        """A ``filters`` mapping selecting every container of ``job``."""
        return {"label": [f"{MANAGED_BY}=juliarun", f"{SCOPE}={self.scope}", f"{JOB}={job}"]}

    def selector(self) -> dict[str, list[str]]:
        return {"label": [f"{MANAGED_BY}=juliarun", f"{SCOPE}={self.scope}"]}


@dataclass(frozen=True)
class EngineConfig:
    """How to reach the engine: ``base_url`` (``None``: ``DOCKER_HOST``, else the local
    socket), API ``version`` and request ``timeout``. Written to each job so its supervisor
    connects the same way; it holds no secrets."""

    base_url: str | None = None
    version: str = "auto"
    timeout: int = 60

    @property
    def endpoint(self) -> str:
        return self.base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET

    def to_json(self) -> dict[str, Any]:
        # An unset base_url stays unset: the supervisor inherits DOCKER_HOST (and any TLS
        # variables) from the process that submits the job.
        return {"base_url": self.base_url, "version": self.version, "timeout": self.timeout}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineConfig:
        return cls(data.get("base_url"), data.get("version", "auto"), data.get("timeout", 60))

    def connect(self, *, pool: int = 10) -> docker.DockerClient:
        """A client; ``pool`` connections are kept (one per concurrent log stream)."""
        try:
            if self.base_url is None:
                return docker.from_env(
                    version=self.version, timeout=self.timeout, max_pool_size=pool
                )
            return docker.DockerClient(
                base_url=self.base_url,
                version=self.version,
                timeout=self.timeout,
                max_pool_size=pool,
            )
        except docker.errors.DockerException as exc:
            raise ConfigError(
                f"cannot connect to the Docker engine at {self.endpoint}: {root_cause(exc)}",
                hint="start the Docker engine, or set DOCKER_HOST to where it listens",
            ) from exc


def root_cause(exc: BaseException) -> str:
    """The innermost reason of a connection error (docker wraps requests, which wraps urllib3,
    which wraps the ``OSError``): its ``strerror`` when there is one, else the first line.

    >>> inner = FileNotFoundError(2, "No such file or directory")
    >>> root_cause(RuntimeError(("Connection aborted.", inner)))
    'No such file or directory'
    """
    todo: list[object] = [exc]
    seen: set[int] = set()
    while todo:
        item = todo.pop(0)
        if id(item) in seen or not isinstance(item, BaseException | tuple):
            continue
        seen.add(id(item))
        if isinstance(item, tuple):
            todo.extend(item)
            continue
        if isinstance(item, OSError) and isinstance(item.strerror, str) and item.strerror:
            return item.strerror
        todo.extend([*item.args, item.__cause__, item.__context__])
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for pulling from one registry; the password stays a ``SecretStr`` until
    the pull that needs it."""

    registry: str
    username: str
    password: SecretStr

    def applies_to(self, image: str) -> bool:
        wanted = self.registry.removeprefix("https://").removeprefix("http://").rstrip("/")
        return image_registry(image) == wanted or (
            wanted in ("index.docker.io", "registry-1.docker.io")
            and image_registry(image) == "docker.io"
        )

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password.get_secret_value()}


def image_registry(image: str) -> str:
    """The registry host an image reference pulls from (``docker.io`` when it names none)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def transient(exc: BaseException) -> bool:
    """A failure worth one more try: the engine did not answer (not: it refused)."""
    return isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout)


def retry(call: Callable[[], T], *, attempts: int = 3, sleep: Callable[[float], None]) -> T:
    """``call()``, again after a transient failure (up to ``attempts`` times)."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts - 1 or not transient(exc):
                raise
            sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def ensure_image(
    client: docker.DockerClient, image: str, *, kind: str, auth: RegistryAuth | None, default: bool
) -> None:
    """Make sure the engine has ``image``, pulling it if needed; raises :class:`SpecError`
    naming ``image`` when it is neither present nor pullable."""
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise BackendError(f"the Docker engine cannot look up image {image!r}: {exc}") from exc
    auth_config = auth.auth_config() if auth and auth.applies_to(image) else None
    try:
        client.images.pull(image, auth_config=auth_config)
    except requests.exceptions.ConnectionError as exc:
        raise BackendError(f"the Docker engine did not answer while pulling {image!r}") from exc
    except docker.errors.APIError as exc:
        which = f"{image!r} (the default, JULIARUN_JULIA_IMAGE)" if default else repr(image)
        reason = getattr(exc, "explanation", None) or str(exc)
        raise SpecError(
            kind,
            [("image", f"{which} is not on the Docker engine and cannot be pulled: {reason}")],
            hint="check the image name and tag, build and push it first (build_image), "
            "or give registry credentials",
        ) from exc


def gpu_runtimes(info: Mapping[str, Any]) -> list[str]:
    """The engine's runtimes that can give containers GPUs (from ``docker info``)."""
    return sorted(r for r in info.get("Runtimes", {}) if "nvidia" in r)
