"""Build an implementation chosen by a ``kind`` key from a registry of ``"module:Class"``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from juliarun.errors import ConfigError


def build(registry: Mapping[str, str], config: Mapping[str, Any], what: str) -> Any:
    """Instantiate ``registry[config["kind"]]`` with the rest of ``config`` as keywords."""
    options = dict(config)
    kind = options.pop("kind", None)
    target = registry.get(str(kind))
    if target is None:
        raise ConfigError(f"{what} kind {kind!r} is not one of {', '.join(sorted(registry))}")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(**options)
