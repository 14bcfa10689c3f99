"""Named storage as a drive on your laptop (the talk's "mount file storage as a drive"): a
storage's files over WebDAV, for the router to serve to the members of the storage's tenant.

:func:`webdav_app` is an ASGI app over one folder, built on WsgiDAV's filesystem provider (the
WebDAV protocol: PROPFIND, GET, PUT, MKCOL, MOVE, COPY, DELETE, LOCK), run in a thread pool:

- **Confined to the folder.** Paths are resolved inside it and a symbolic link is followed only
  when its target is inside it too; ``..`` and everything that would resolve outside are refused.
- **Read-only storage stays read-only**: every writing method is refused with 403.
- **No authentication of its own.** The router authenticates and authorizes each request (the
  caller must be a member of the storage's tenant) before handing it here; on its own the app
  must only be reachable through the router.

>>> import tempfile
>>> app = webdav_app(Path(tempfile.mkdtemp()), read_only=True, mount_path="/storage/results")
>>> callable(app)
True
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

MOUNT_PREFIX = "/storage/"
"""Where the router serves named storage: ``/storage/<name>/...``."""


def webdav_app(root: Path, *, read_only: bool, mount_path: str) -> Any:
    """An ASGI app serving ``root`` over WebDAV below ``mount_path`` (``read_only`` refuses
    every write)."""
    from a2wsgi import WSGIMiddleware
    from wsgidav.fs_dav_provider import FilesystemProvider
    from wsgidav.wsgidav_app import WsgiDAVApp

    if not root.is_dir():
        raise FileNotFoundError(f"storage folder {root} does not exist")
    provider = FilesystemProvider(
        str(root.resolve()), readonly=read_only, fs_opts={"follow_symlinks": False}
    )
    config = {
        "provider_mapping": {mount_path.rstrip("/"): provider},
        # the router has authenticated and authorized the caller: no second sign-in here
        "http_authenticator": {
            "domain_controller": None,
            "accept_basic": False,
            "accept_digest": False,
            "default_to_digest": False,
        },
        "simple_dc": {"user_mapping": {"*": True}},
        "dir_browser": {"enable": True, "response_trailer": "juliarun storage"},
        "lock_storage": True,
        "property_manager": True,
        "logging": {"enable": False, "enable_loggers": []},
        "verbose": 0,
    }
    logging.getLogger("wsgidav").setLevel(logging.WARNING)
    return WSGIMiddleware(WsgiDAVApp(config))
