"""The Docker backend: workers as containers on one Docker engine."""

from juliarun.backends.docker.backend import DockerBackend
from juliarun.backends.docker.engine import EngineConfig, RegistryAuth

__all__ = ["DockerBackend", "EngineConfig", "RegistryAuth"]
