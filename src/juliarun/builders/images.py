"""Image builds: an :class:`~juliarun.specs.ImageSpec` becomes a Dockerfile and a build
context, tagged ``<registry>/<name>:<hash12>`` by a content hash of the spec, the base image's
id and every file copied in, built on the Docker engine (each output line to a callback) and
pushed. A tag the registry already has is not built again.

>>> from juliarun.specs import ImageSpec
>>> spec = ImageSpec(name="juliarun/app", base="debian:bookworm", apt=["curl"], run=["true"])
>>> print(render_dockerfile(spec))
FROM debian:bookworm
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
curl && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/app
RUN true
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from juliarun.backends.docker.engine import MANAGED_BY, RegistryAuth, image_registry
from juliarun.errors import BackendError, BuildError, SpecError
from juliarun.specs import ImageSpec

LineCallback = Callable[[str], None]
IMAGE_HASH = "juliarun.io/image-hash"
TAIL = 20
_LAYER = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True)
class ImagePlan:
    """What a build of a spec produces: its content ``digest`` and the ``tag`` it gets."""

    spec: ImageSpec
    registry: str
    digest: str
    base_id: str

    @property
    def repository(self) -> str:
        return f"{self.registry.rstrip('/')}/{self.spec.name}" if self.registry else self.spec.name

    @property
    def tag(self) -> str:
        return f"{self.repository}:{self.digest[:12]}"


@dataclass(frozen=True)
class BuiltImage:
    """The outcome of :func:`build_image`: the tag, and whether it was built and pushed now."""

    tag: str
    digest: str
    built: bool
    pushed: bool


def bundle_root(bundle: Path) -> str:
    """Where a built bundle address expects to be seen (its ``bundle.json`` records it)."""
    info = bundle / "bundle.json"
    if not info.is_file():
        raise SpecError(
            "ImageSpec",
            [("bundle", f"{bundle} is not a built package bundle (no bundle.json)")],
            hint="build it first with build_package_bundle and pass its address",
        )
    return str(json.loads(info.read_text())["root"])


def render_dockerfile(spec: ImageSpec) -> str:
    """The Dockerfile of ``spec`` (its build context is made by :func:`build_image`)."""
    lines = [f"FROM {spec.base}"]
    if spec.apt:
        lines.append(
            "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
            f"--no-install-recommends {' '.join(spec.apt)} && rm -rf /var/lib/apt/lists/*"
        )
    for index, dest in enumerate(spec.files):
        lines.append(f"COPY files/{index} {json.dumps(dest)}")
    if spec.context:
        lines.append(f"COPY context/ {spec.workdir}/")
    lines.append(f"WORKDIR {spec.workdir}")
    if spec.bundle:
        root = bundle_root(Path(spec.bundle))
        lines.append(f"COPY bundle/ {root}/")
        lines.append(
            f"ENV JULIA_DEPOT_PATH={json.dumps(root + '/depot:')} "
            f"JULIA_PROJECT={json.dumps(root + '/env')}"
        )
    for key, value in spec.env.items():
        lines.append(f"ENV {key}={json.dumps(value)}")
    lines += [f"RUN {command}" for command in spec.run]
    if spec.entrypoint is not None:
        lines.append(f"ENTRYPOINT {json.dumps(spec.entrypoint)}")
    return "\n".join(lines)


def _tree(path: Path) -> Iterator[tuple[str, Path]]:
    if path.is_file():
        yield "", path
        return
    for item in sorted(path.rglob("*")):
        if item.is_file():
            yield item.relative_to(path).as_posix(), item


def _hash_tree(digest: Any, label: str, path: Path) -> None:
    for rel, item in _tree(path):
        digest.update(f"{label}/{rel}\0{item.stat().st_mode & 0o777}\0".encode())
        digest.update(hashlib.sha256(item.read_bytes()).digest())


def _check_paths(spec: ImageSpec) -> None:
    problems = [
        (f"files.{dest}", f"{src} does not exist")
        for dest, src in spec.files.items()
        if not Path(src).exists()
    ]
    if spec.context and not Path(spec.context).is_dir():
        problems.append(("context", f"{spec.context} is not a directory"))
    if spec.bundle and not Path(spec.bundle).is_dir():
        problems.append(("bundle", f"{spec.bundle} is not a directory"))
    if problems:
        raise SpecError("ImageSpec", problems)


def _base_id(client: docker.DockerClient, spec: ImageSpec, auth: RegistryAuth | None) -> str:
    try:
        return str(client.images.get(spec.base).id)
    except docker.errors.ImageNotFound:
        pass
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise BackendError(f"the Docker engine cannot look up {spec.base!r}: {exc}") from exc
    auth_config = auth.auth_config() if auth and auth.applies_to(spec.base) else None
    try:
        return str(client.images.pull(spec.base, auth_config=auth_config).id)
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        reason = getattr(exc, "explanation", None) or str(exc)
        raise SpecError(
            "ImageSpec",
            [("base", f"{spec.base!r} is not on the Docker engine and cannot be pulled: {reason}")],
            hint="check the base image's name and tag, or build and push it first",
        ) from exc


def plan_image(
    client: docker.DockerClient,
    spec: ImageSpec,
    registry: str,
    *,
    auth: RegistryAuth | None = None,
) -> ImagePlan:
    """Check ``spec`` against this machine and the engine (paths exist, the base image is
    present or pullable) and compute its content hash; nothing is built."""
    _check_paths(spec)
    base_id = _base_id(client, spec, auth)
    digest = hashlib.sha256()
    digest.update(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(base_id.encode())
    for index, src in enumerate(spec.files.values()):
        _hash_tree(digest, f"files/{index}", Path(src))
    if spec.context:
        _hash_tree(digest, "context", Path(spec.context))
    if spec.bundle:  # an address is named by its content hash already
        bundle = Path(spec.bundle)
        digest.update(f"bundle\0{bundle.name}\0{bundle_root(bundle)}".encode())
    return ImagePlan(spec, registry, digest.hexdigest(), base_id)


def registry_has(
    client: docker.DockerClient, tag: str, *, auth: RegistryAuth | None = None
) -> bool:
    """Whether the registry serves ``tag`` (asked through the engine)."""
    auth_config = auth.auth_config() if auth and auth.applies_to(tag) else None
    try:
        client.images.get_registry_data(tag, auth_config=auth_config)
    except (docker.errors.NotFound, docker.errors.APIError):
        return False
    return True


def _stage_context(spec: ImageSpec, root: Path) -> None:
    (root / "Dockerfile").write_text(render_dockerfile(spec) + "\n")
    for index, src in enumerate(spec.files.values()):
        source, target = Path(src), root / "files" / str(index)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
    if spec.context:
        shutil.copytree(spec.context, root / "context", symlinks=True)
    if spec.bundle:
        shutil.copytree(spec.bundle, root / "bundle", symlinks=True)


def _stream(
    chunks: Iterable[dict[str, Any]],
    what: str,
    on_line: LineCallback | None,
    created: list[str] | None = None,
    *,
    step: str = "(before the first step)",
    hint: str | None = None,
) -> deque[str]:
    """Pass each line of a build's output on; raise :class:`BuildError` naming the step that
    was running when the engine reports an error (``step`` until a ``Step`` line, with
    ``hint``). Ids of the layers this build made (not taken from the cache, not the base) are
    appended to ``created``."""
    tail: deque[str] = deque(maxlen=TAIL)
    previous = ""
    for chunk in chunks:
        if "error" in chunk:
            message = str(chunk.get("errorDetail", {}).get("message") or chunk["error"])
            tail.append(message.rstrip())
            if on_line is not None:
                on_line(message.rstrip())
            raise BuildError(what, step, list(tail), hint=hint)
        text = chunk.get("stream") or chunk.get("status") or ""
        for raw in str(text).splitlines():
            line = raw.rstrip()
            if not line:
                continue
            if line.startswith("Step ") and " : " in line:
                step = line.split(" : ", 1)[1]
            layer = line.strip().removeprefix("---> ")
            if (
                created is not None
                and line.strip().startswith("---> ")
                and _LAYER.fullmatch(layer)
                and previous.strip() != "---> Using cache"
                and not step.startswith("FROM ")
            ):
                created.append(layer)
            previous = line
            tail.append(line)
            if on_line is not None:
                on_line(line)
    return tail


def _remove_layers(client: docker.DockerClient, layers: list[str]) -> None:
    for layer in reversed(layers):  # children first
        try:
            client.images.remove(layer, noprune=False)
        except (docker.errors.APIError, requests.exceptions.RequestException):
            continue  # in use, or shared with another build: leave it


def build_image(
    client: docker.DockerClient,
    spec: ImageSpec,
    registry: str,
    *,
    auth: RegistryAuth | None = None,
    on_line: LineCallback | None = None,
    push: bool = True,
) -> BuiltImage:
    """Build ``spec`` as ``<registry>/<name>:<hash12>`` and push it; when the registry already
    has that tag nothing is built. Raises :class:`SpecError` (naming ``base``, ``files``,
    ``context`` or ``bundle``) before building and :class:`BuildError` naming the failing
    Dockerfile instruction and its output."""
    plan = plan_image(client, spec, registry, auth=auth)
    if push and registry and registry_has(client, plan.tag, auth=auth):
        if on_line is not None:
            on_line(f"{plan.tag} is in the registry already: nothing to build")
        return BuiltImage(plan.tag, plan.digest, built=False, pushed=False)
    labels = {**spec.labels, MANAGED_BY: "juliarun", IMAGE_HASH: plan.digest}
    created: list[str] = []
    with tempfile.TemporaryDirectory(prefix="juliarun-build-") as tmp:
        _stage_context(spec, Path(tmp))
        try:
            chunks = client.api.build(
                path=tmp,
                tag=plan.tag,
                labels=labels,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            _stream(chunks, f"image build of {plan.tag}", on_line, created)
        except BuildError:
            _remove_layers(client, created)  # a failed build leaves no untagged layers
            raise
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise BuildError(
                f"image build of {plan.tag}", "(starting the build)", [str(exc)]
            ) from exc
    if not push or not registry:
        return BuiltImage(plan.tag, plan.digest, built=True, pushed=False)
    auth_config = auth.auth_config() if auth and auth.applies_to(plan.tag) else None
    try:
        chunks = client.api.push(
            plan.repository,
            tag=plan.digest[:12],
            stream=True,
            decode=True,
            auth_config=auth_config,
        )
        refused = (
            f"if the registry {image_registry(plan.tag)} refused the login (unauthorized), "
            "check the registry credentials; else check that it is up, and push again"
        )
        _stream(chunks, f"push of {plan.tag}", on_line, step="push", hint=refused)
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise BuildError(f"push of {plan.tag}", "push", [str(exc)], hint=refused) from exc
    return BuiltImage(plan.tag, plan.digest, built=True, pushed=True)
