"""A second, independent RabbitMQ node for tests that stop, restart or kill a broker.

The shared development broker (127.0.0.1:5672, node ``rabbit@localhost``) is never touched:
each ``RabbitNode`` runs Debian's RabbitMQ scripts from ``/usr/lib/rabbitmq/bin`` directly,
with a clean environment, its own node name, ports, config file, plugins file (none), Mnesia
and log folders, and its own HOME holding a copy of the Erlang cookie.

    with RabbitNode(port=5673, name="ts-fault", workdir=tmp_path) as node:
        node.start()
        ...  # connect to node.url
        node.kill()  # SIGKILL the Erlang VM: a crash
        node.start()  # durable queues and persistent messages are back

As root the node runs as the ``rabbitmq`` user, so its folder must be writable by that user.
When ``workdir`` is not reachable by it (pytest's ``tmp_path`` lives under a 0700 folder), the
node's files go to a private folder in the system's temp folder instead, linked from
``workdir/<name>/node``; ``close()`` copies the logs to ``workdir/<name>/log`` and removes
that private folder. Nothing else is removed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SHARED_COOKIE = Path("/var/lib/rabbitmq/.erlang.cookie")
HOST = "127.0.0.1"
SHARED_PORTS = frozenset({5672, 15672, 25672})
LOOPBACK_DIST_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"


class RabbitNodeError(RuntimeError):
    """The node did not do what was asked in time; the message ends with its log's tail."""


def rabbitmq_available() -> bool:
    """True when Debian's RabbitMQ server scripts are installed."""
    return (RABBITMQ_BIN / "rabbitmq-server").is_file()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def amqp_answers(port: int, timeout: float = 1.0) -> bool:
    """True when 127.0.0.1:port answers the AMQP 0-9-1 header with a frame (Connection.Start)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(1) == b"\x01"
    except OSError:
        return False


def port_open(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


class RabbitNode:
    """One RabbitMQ node of its own on 127.0.0.1:``port``, named ``name@localhost``.

    ``port=0`` asks the OS for a free port; the Erlang distribution port is ``dist_port``, or
    ``port + 20000`` when that is a valid port, or another free port.
    """

    def __init__(
        self,
        port: int,
        name: str,
        workdir: Path,
        *,
        dist_port: int | None = None,
        extra_config: str = "",
        advanced_config: str | None = None,
    ) -> None:
        if not name or "@" in name or name == "rabbit":
            raise ValueError(f"node name must be a plain name other than 'rabbit': {name!r}")
        self.port = port or free_port()
        if dist_port is None:
            dist_port = self.port + 20000 if self.port + 20000 <= 65535 else free_port()
        self.dist_port = dist_port
        if {self.port, self.dist_port} & SHARED_PORTS or self.port == self.dist_port:
            raise ValueError(
                f"ports {self.port}/{self.dist_port} collide with each other or with the shared "
                "broker's 5672/15672/25672"
            )
        self.name = name
        self.node = f"{name}@localhost"
        #: Lines added to the node's rabbitmq.conf (e.g. ``consumer_timeout = 3000``), and the
        #: Erlang terms of an advanced.config (settings rabbitmq.conf has no key for).
        self.extra_config = extra_config
        self.advanced_config = advanced_config
        self.workdir = Path(workdir)
        self.home_dir = self.workdir / name  # always the caller's view of this node
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._private: Path | None = None  # a folder of our own, when workdir is unreachable
        self._run_as = self._pick_user()
        self.dir = self._prepare()

    # --- public API --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}/%2F"

    @property
    def log_file(self) -> Path:
        return self.dir / "log" / f"{self.node}.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "node.pid"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30) -> None:
        """Start the node (if not running) and wait until its AMQP port answers."""
        from tests.conftest import note_broker  # not at import: conftest imports this module

        note_broker("private Debian nodes (tests/rabbit_node.py), each started for one test")
        if not self.running:
            if port_open(self.port):
                raise RabbitNodeError(f"port {self.port} is already taken by something else")
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
            self._close_stdout()
            self._stdout = open(self.dir / "stdout.log", "ab")  # noqa: SIM115
            self._proc = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self._env(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._user_kwargs(),
            )
        self._wait(lambda: amqp_answers(self.port), timeout, "to accept AMQP connections")

    def stop(self, timeout: float = 30) -> None:
        """Graceful stop: SIGTERM the node's process group and wait for it to exit."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                raise RabbitNodeError(
                    f"{self.node} did not stop within {timeout}s of SIGTERM; killed it"
                    + self._tail()
                ) from None
        self._reap()
        self._wait(lambda: not port_open(self.port), 10, "to close its port")

    def kill(self, timeout: float = 15) -> None:
        """Crash: SIGKILL the Erlang VM (pid from the pid file), wait until the port closes."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._reap()
            return
        pid = self.vm_pid()
        if pid is None:  # too early for a pid file: kill everything the node started
            self._killpg()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            proc.wait(timeout)  # the wrapper shell exits once the VM is gone
        except subprocess.TimeoutExpired:
            self._killpg()
            proc.wait(5)
        self._reap()
        if pid is not None:
            self._wait(lambda: not pid_alive(pid), timeout, "to lose its Erlang VM")
        self._wait(lambda: not port_open(self.port), timeout, "to close its port")

    def restart(self, timeout: float = 30) -> None:
        self.stop()
        self.start(timeout)

    def stop_app(self) -> None:
        """``rabbitmqctl stop_app``: the VM keeps running, AMQP stops answering."""
        self.ctl("stop_app")
        self._wait(lambda: not port_open(self.port), 15, "to close its port after stop_app")

    def start_app(self, timeout: float = 30) -> None:
        self.ctl("start_app")
        self._wait(lambda: amqp_answers(self.port), timeout, "to accept AMQP after start_app")

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n NAME@localhost ARGS...`` against this node; return stdout."""
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", self.node, *args],
            env=self._env(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            **self._user_kwargs(),
        )
        if done.returncode != 0:
            raise RabbitNodeError(
                f"rabbitmqctl {' '.join(args)} exited {done.returncode}: "
                f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode(errors="replace")

    def vm_pid(self) -> int | None:
        """The Erlang VM's OS pid, from the node's pid file (None before the node wrote it)."""
        try:
            text = self.pid_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in (self.dir / "stdout.log", self.log_file):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"== {path}\n" + "\n".join(text))
        return "\n".join(out)

    def close(self) -> None:
        """Stop the node (killing it if it will not stop) and release what it holds.

        Removes only the private temp folder that the node made for itself (after copying its
        logs to ``workdir/<name>/log``); never touches the shared broker on 5672.
        """
        try:
            if self.running:
                with contextlib.suppress(RabbitNodeError):
                    self.stop(timeout=20)
            self._killpg()
            self._reap()
        finally:
            self._close_stdout()
            if self._private is not None and self._private.exists():
                logs = self.home_dir / "log"
                with contextlib.suppress(OSError):
                    shutil.copytree(self._private / "log", logs, dirs_exist_ok=True)
                    shutil.copy2(self._private / "stdout.log", logs)
                with contextlib.suppress(OSError):
                    (self.home_dir / "node").unlink()
                shutil.rmtree(self._private, ignore_errors=True)
                self._private = None

    def __enter__(self) -> RabbitNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RabbitNode({self.node}, port={self.port}, {state}, dir={self.dir})"

    # --- internals ---------------------------------------------------------------------------

    @staticmethod
    def _pick_user() -> pwd.struct_passwd | None:
        """As root, run as the rabbitmq user (as Debian's wrappers do); otherwise as ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("rabbitmq")
        except KeyError:
            return None

    def _user_kwargs(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    def _writable_by_run_user(self, path: Path) -> bool:
        if self._run_as is None:
            return os.access(path, os.W_OK | os.X_OK)
        probe = subprocess.run(
            ["test", "-w", str(path), "-a", "-x", str(path)],
            check=False,
            **self._user_kwargs(),
        )
        return probe.returncode == 0

    def _prepare(self) -> Path:
        self.home_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.home_dir)
        base = self.home_dir
        if not self._writable_by_run_user(base):
            self._private = Path(tempfile.mkdtemp(prefix=f"rabbitnode-{self.name}-"))
            self._chown(self._private)
            base = self._private
            link = self.home_dir / "node"
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(base, target_is_directory=True)
        for sub in ("home", "mnesia", "log"):
            (base / sub).mkdir(exist_ok=True)
            self._chown(base / sub)
        files = {
            "rabbitmq.conf": f"listeners.tcp.default = {HOST}:{self.port}\n"
            + (f"{self.extra_config}\n" if self.extra_config else ""),
            "rabbitmq-env.conf": "# empty: everything comes from the environment\n",
            "enabled_plugins": "[].\n",
        }
        if self.advanced_config is not None:
            files["advanced.config"] = self.advanced_config
        for fname, text in files.items():
            (base / fname).write_text(text)
            self._chown(base / fname)
        cookie = base / "home" / ".erlang.cookie"
        if SHARED_COOKIE.is_file() and not cookie.exists():
            # Same cookie as the shared node, so `rabbitmqctl -n NAME@localhost` works as usual.
            shutil.copyfile(SHARED_COOKIE, cookie)
            cookie.chmod(0o400)
            self._chown(cookie)
        return base

    def _env(self) -> dict[str, str]:
        d = self.dir
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(d / "home"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": LOOPBACK_DIST_ARGS,
            "RABBITMQ_CTL_ERL_ARGS": LOOPBACK_DIST_ARGS,
        }
        if self.advanced_config is not None:
            env["RABBITMQ_ADVANCED_CONFIG_FILE"] = str(d / "advanced.config")
        return env

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if ready():
                return
            if what.startswith("to accept") and self._proc is not None:
                code = self._proc.poll()
                if code is not None:
                    raise RabbitNodeError(
                        f"{self.node} exited with code {code} before it was ready" + self._tail()
                    )
            if time.monotonic() >= deadline:
                raise RabbitNodeError(f"{self.node} took over {timeout}s {what}" + self._tail())
            time.sleep(0.1)

    def _tail(self) -> str:
        tail = self.log_tail()
        return f"\n{tail}" if tail else ""

    def _killpg(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def _close_stdout(self) -> None:
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes once its state is Z.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True
