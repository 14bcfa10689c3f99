"""A dedicated RabbitMQ broker per queue for the local backend.

Each broker is its own ``rabbitmq-server`` (Debian's package) with everything under
``<home>/clusters/<cluster>/queues/<name>/``: config, Mnesia data, logs, Erlang cookie. It is a
node ``juliarun-<name>-<hash>@localhost`` (see :func:`node_name`: unique per home, cluster and
name, since every node of the machine registers with the one EPMD) listening on loopback only,
on ports chosen free at its first start and kept (clients reconnect to the same endpoints after
a restart). Its user and password are generated at the first start and kept in files only the
owner can read (0600); they are never logged. The process group is recorded (PID and start
time) and stopped by that PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from juliarun.errors import QueueError, SpecError
from juliarun.queues.rabbitmq import RabbitMQQueue

SBIN = Path("/usr/lib/rabbitmq/bin")
USER = "juliarun"
EPMD_PORT = 4369
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")


def check_name(name: str) -> str:
    """A broker name is a DNS-1123 label of at most 40 characters (it names a directory and
    an Erlang node).

    >>> check_name("work-1")
    'work-1'
    >>> check_name("Work_1")
    Traceback (most recent call last):
    ...
    juliarun.errors.SpecError: invalid queue: name: must be lower-case letters, digits and '-', ...
    """
    if not NAME.match(name):
        raise SpecError(
            "queue",
            [
                (
                    "name",
                    "must be lower-case letters, digits and '-', start and end with a letter "
                    f"or digit, at most 40 characters (got {name!r})",
                )
            ],
        )
    return name


def broker_dir(home: Path, cluster: str, name: str) -> Path:
    """Where the broker ``name`` of ``cluster`` keeps everything.

    >>> broker_dir(Path("/h"), "local", "work").as_posix()
    '/h/clusters/local/queues/work'
    """
    return Path(home) / "clusters" / cluster / "queues" / name


def node_name(home: Path, cluster: str, name: str) -> str:
    """The Erlang node of the broker ``name`` of ``cluster`` under ``home``:
    ``juliarun-<name>-<hash>@localhost``, where ``<hash>`` is 10 hex digits of a SHA-256 of the
    resolved home path, the cluster and the name. Every Erlang node of the machine registers its
    name with the one EPMD, so two homes (or clusters) starting a broker of the same name at
    once would clash on ``juliarun-<name>``; the hash keeps them apart. The name part stays
    within what Erlang and ``rabbitmq-server`` accept: letters, digits and ``-``, at most 60
    characters (a broker name has at most 40).

    >>> a = node_name(Path("/home/a/.juliarun"), "local", "mq")
    >>> a.startswith("juliarun-mq-") and a.endswith("@localhost"), len(a.split("@")[0])
    (True, 22)
    >>> a == node_name(Path("/home/a/.juliarun/../.juliarun"), "local", "mq")
    True
    >>> len({a, node_name(Path("/home/b/.juliarun"), "local", "mq"),
    ...      node_name(Path("/home/a/.juliarun"), "other", "mq")})
    3
    """
    where = str(Path(home).resolve())
    digest = hashlib.sha256("\0".join((where, cluster, name)).encode()).hexdigest()[:10]
    return f"juliarun-{name}-{digest}@localhost"


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class LocalBroker:
    """The files of one local broker."""

    def __init__(self, home: Path, cluster: str, name: str) -> None:
        self.cluster = cluster
        self.name = check_name(name)
        self.path = broker_dir(home, cluster, name)
        self._node = node_name(home, cluster, name)

    @property
    def node(self) -> str:
        """The node recorded at the first start (its Mnesia data is under that name, so a
        broker keeps it), else the one :func:`node_name` gives."""
        return str(self._read("broker.json").get("node") or self._node)

    def _read(self, file: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.path / file).read_text())
        except FileNotFoundError:
            return {}
        return data

    def ports(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._read("broker.json").get("ports", {}).items()}

    def credentials(self) -> dict[str, str]:
        return {k: str(v) for k, v in self._read("credentials.json").items()}

    def launch(self) -> dict[str, Any]:
        return self._read("launch.json")

    def pid(self) -> int | None:
        """The recorded process group leader, when it is still that process and running."""
        launch = self.launch()
        if not launch:
            return None
        try:
            proc = psutil.Process(int(launch["pid"]))
            if abs(proc.create_time() - float(launch["create_time"])) > 0.01:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return int(launch["pid"])

    def queue(self) -> RabbitMQQueue:
        ports, creds = self.ports(), self.credentials()
        quote = urllib.parse.quote
        url = f"amqp://{quote(creds['user'], safe='')}:{quote(creds['password'], safe='')}"
        return RabbitMQQueue(
            f"{url}@127.0.0.1:{ports['amqp']}/%2F",
            management_url=f"http://127.0.0.1:{ports['management']}",
            stomp_port=ports["stomp"],
            name=self.name,
        )

    # -- files ---------------------------------------------------------------------------

    def configure(self) -> None:
        """Write the config once: ports, plugins, generated credentials (kept across restarts)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for sub in ("mnesia", "log"):
            (self.path / sub).mkdir(exist_ok=True)
        if not self.ports():
            amqp, stomp, management, dist = _free_ports(4)
            ports = {"amqp": amqp, "stomp": stomp, "management": management, "dist": dist}
            (self.path / "broker.json").write_text(
                json.dumps({"node": self.node, "ports": ports}, indent=1)
            )
        if not self.credentials():
            _write_private(
                self.path / "credentials.json",
                json.dumps({"user": USER, "password": secrets.token_urlsafe(24)}),
            )
        ports, creds = self.ports(), self.credentials()
        (self.path / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_stomp].\n")
        (self.path / "rabbitmq-env.conf").write_text("")
        # default_user/default_pass create the user (administrator, all permissions on "/")
        # at the first boot; the file holds the password, so it is private.
        _write_private(
            self.path / "rabbitmq.conf",
            "\n".join(
                [
                    "# Written by juliarun for the local queue broker "
                    f"{self.name!r} (cluster {self.cluster!r}).",
                    f"listeners.tcp.default = 127.0.0.1:{ports['amqp']}",
                    "management.tcp.ip = 127.0.0.1",
                    f"management.tcp.port = {ports['management']}",
                    "management.rates_mode = basic",
                    "collect_statistics_interval = 2000",
                    f"stomp.listeners.tcp.1 = 127.0.0.1:{ports['stomp']}",
                    f"default_user = {creds['user']}",
                    f"default_pass = {creds['password']}",
                    "default_user_tags.administrator = true",
                    "loopback_users = none",
                    "vm_memory_high_watermark.absolute = 512MB",
                    "disk_free_limit.absolute = 50MB",
                    "log.file.level = info",
                    "log.console = false",
                    "",
                ]
            ),
        )

    def environment(self) -> dict[str, str]:
        run = str(self.path)
        ports = self.ports()
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": run,  # the Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_CONF_ENV_FILE": f"{run}/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": f"{run}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{run}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{run}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{run}/mnesia",
            "RABBITMQ_LOG_BASE": f"{run}/log",
            "RABBITMQ_PID_FILE": f"{run}/beam.pid",
            "RABBITMQ_DIST_PORT": str(ports["dist"]),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(EPMD_PORT),
        }

    def log_tail(self, lines: int = 15) -> str:
        logs = sorted((self.path / "log").glob("*.log"), key=lambda p: p.stat().st_mtime)
        text: list[str] = []
        for log in logs[-2:]:
            text += [f"--- {log.name}", *log.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(text)


def _ready(broker: LocalBroker) -> bool:
    ports = broker.ports()
    if not all(_port_open(ports[k]) for k in ("amqp", "stomp", "management")):
        return False
    queue = broker.queue()
    try:
        queue._api("/api/overview")
        queue._open()
    except QueueError:
        return False
    finally:
        queue.close()
    return True


def start_local_broker(
    home: Path,
    cluster: str,
    name: str,
    *,
    timeout: float = 120.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RabbitMQQueue:
    """Start the broker ``name`` (or find it running) and return a handle once it is ready.

    Idempotent: a broker already running under that name is returned as it is; one that was
    stopped starts again with the same ports, credentials and (durable) messages.
    """
    broker = LocalBroker(home, cluster, name)
    server = SBIN / "rabbitmq-server"
    if not server.exists():
        raise QueueError(
            f"{server} is not installed",
            hint="install Debian's rabbitmq-server package",
        )
    with _locked(broker.path):
        broker.configure()
        if broker.pid() is None:
            busy = [p for k, p in broker.ports().items() if k != "dist" and _port_open(p)]
            if busy:
                raise QueueError(
                    f"the ports of queue broker {name!r} ({busy}) are taken by another process",
                    hint=f"delete the queue (juliarun.delete) and start it again: {broker.path}",
                )
            with open(broker.path / "log" / "stdout.log", "ab") as out:
                proc = subprocess.Popen(
                    [str(server)],
                    cwd=broker.path,
                    env=broker.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            created = psutil.Process(proc.pid).create_time()
            (broker.path / "launch.json").write_text(
                json.dumps({"pid": proc.pid, "create_time": created})
            )
        deadline = clock() + timeout
        while not _ready(broker):
            if broker.pid() is None:
                raise QueueError(
                    f"the queue broker {name!r} exited while starting:\n{broker.log_tail()}",
                    hint=f"see its logs in {broker.path / 'log'}",
                )
            if clock() > deadline:
                raise QueueError(
                    f"the queue broker {name!r} was not ready after {timeout:g}s",
                    hint=f"see its logs in {broker.path / 'log'}",
                )
            sleep(0.25)
    return broker.queue()


def local_broker(home: Path, cluster: str, name: str) -> RabbitMQQueue | None:
    """A handle on the running broker ``name``, or ``None`` when it is not running."""
    broker = LocalBroker(home, cluster, name)
    return broker.queue() if broker.pid() is not None else None


def list_local_brokers(home: Path, cluster: str) -> list[str]:
    """Names of the brokers of ``cluster`` (running or stopped)."""
    root = Path(home) / "clusters" / cluster / "queues"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "broker.json").is_file())


def stop_local_broker(
    home: Path,
    cluster: str,
    name: str,
    *,
    force: bool = False,
    grace: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Stop the broker ``name`` by its recorded process group: SIGTERM (RabbitMQ shuts down
    cleanly, durable queues and persistent messages are kept), SIGKILL after ``grace`` seconds
    or at once when ``force``. Returns whether it was running."""
    broker = LocalBroker(home, cluster, name)
    pid = broker.pid()
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
    deadline = clock() + (0 if force else grace)
    while clock() < deadline and _group_alive(pid):
        sleep(0.1)
    if _group_alive(pid):  # an empty group's id may be another process's by now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    deadline = clock() + 10
    while clock() < deadline and _group_alive(pid):
        sleep(0.05)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
    (broker.path / "launch.json").unlink(missing_ok=True)
    return True


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False


def delete_local_broker(
    home: Path,
    cluster: str,
    name: str,
    *,
    force: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Stop the broker ``name`` and remove its directory (messages included). Returns whether
    there was anything to delete."""
    broker = LocalBroker(home, cluster, name)
    if not broker.path.exists():
        return False
    with _locked(broker.path):
        stop_local_broker(home, cluster, name, force=force, clock=clock, sleep=sleep)
        trash = broker.path.with_name(f".deleted-{name}-{uuid.uuid4().hex[:8]}")
        broker.path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True
