"""The parts a benchmark run starts and stops: Redis, the database, the app, workers."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"
REDIS_PREFIX = "bench"


class BenchEnvironment:
    """A temporary directory holding the SQLite databases, a private redis-server,
    and the environment variables that the app and its workers read."""

    def __init__(self):
        self.directory = Path(tempfile.mkdtemp(prefix="pdauto-bench-"))
        self.redis_server = RedisServer()
        self.workers = []

    def start(self):
        self.redis_server.start()
        self.env = {
            **os.environ,
            "PDAUTO_ENV": "development",
            "SECRET_KEY": "bench-secret-key",
            "PDAUTO_INSTANCE_DIR": str(self.directory / "instance"),
            "DATABASE_URL": self.database_url("bench"),
            "REDIS_URL": self.redis_server.url,
            "PDAUTO_REDIS_PREFIX": REDIS_PREFIX,
            "PDAUTO_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
            # The events of a run are committed first and queued at once when the clock
            # starts, so a sweep must not dispatch them while they are being committed.
            "SWEEP_INTERVAL_SECONDS": "3600",
            # No delivery in the benchmarks fails, so no email is sent. Port 1 refuses connections.
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": "1",
        }
        # The app reads these at import and in create_app, in this process too.
        os.environ.update(self.env)
        return self

    def stop(self, keep_files=False):
        """Stop the workers and Redis; delete the files unless `keep_files`."""
        for worker in list(self.workers):
            worker.stop()
        self.redis_server.stop()
        shutil.rmtree(self.redis_server.directory, ignore_errors=True)
        if not keep_files:
            shutil.rmtree(self.directory, ignore_errors=True)

    def database_url(self, name):
        return f"sqlite:///{self.directory / (name + '.sqlite3')}"

    def database_path(self, name):
        return self.directory / (name + ".sqlite3")

    def redis_client(self):
        return redis.Redis.from_url(self.redis_server.url)

    def start_workers(self, count, prefix="worker"):
        """Start `count` worker processes and wait until each listens on its queues."""
        started = []
        for index in range(count):
            name = f"{prefix}-{index + 1}-{os.getpid()}"
            worker = WorkerProcess(self, name)
            worker.start()
            started.append(worker)
            self.workers.append(worker)
        for worker in started:
            worker.wait_until_listening()
        return started

    def stop_workers(self, workers):
        for worker in workers:
            worker.stop()


def make_app(database_url=None):
    """Build the app the way wsgi.py does, from the environment, optionally on another database."""
    from pdauto import create_app

    overrides = {"SQLALCHEMY_DATABASE_URI": database_url} if database_url else None
    return create_app(overrides)


def migrate_database(app):
    """Create the tables by running the migrations, as a deployment does."""
    from flask_migrate import upgrade

    with app.app_context():
        upgrade()


class WorkerProcess:
    """`flask --app wsgi worker`, the production worker command with its scheduler
    and sweep, in its own session so that its scheduler child can be stopped too."""

    def __init__(self, environment, name):
        self.environment = environment
        self.name = name
        self.log_path = environment.directory / f"{name}.log"
        self.process = None

    def start(self):
        command = [
            sys.executable, "-m", "flask", "--app", "wsgi",
            "worker", "--name", self.name,
        ]  # fmt: skip
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.environment.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self):
        return self.process.pid

    def wait_until_listening(self, timeout=60):
        """Wait until RQ has registered the worker, which it does just before listening."""
        from rq import Worker

        client = self.environment.redis_client()
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"worker {self.name} exited with status {self.process.returncode}; "
                        f"see {self.log_path}:\n{self.log_tail()}"
                    )
                names = {worker.name for worker in Worker.all(connection=client)}
                if self.name in names:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker {self.name} did not start in {timeout} s")
                time.sleep(0.05)
        finally:
            client.close()

    def rss_bytes(self):
        """Return the resident set size of the worker process, from /proc/PID/status."""
        return _proc_status_kib(self.pid, "VmRSS") * 1024

    def peak_rss_bytes(self):
        return _proc_status_kib(self.pid, "VmHWM") * 1024

    def log_tail(self, lines=20):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        """Ask for a warm shutdown, then end what is left of the process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        # The RQ scheduler is a forked child in the worker's process group.
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self._log.close()
        self.process = None
        if self in self.environment.workers:
            self.environment.workers.remove(self)


def _proc_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field} line")
