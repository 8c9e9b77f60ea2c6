"""The local run: `python -m pdauto.devserver` starts, serves, and stops every child.

Each test starts the supervisor as a subprocess in the repository root, on free
loopback ports, with its var directory and database under tmp_path.
"""

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis
import requests
from rq import Queue, Worker
from rq.job import JobStatus

from pdauto.devserver import DEMO_EMAIL, DEMO_PASSWORD
from tests.conftest import csrf_token_from
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "Press Ctrl-C to stop."
START_SECONDS = 30
STOP_SECONDS = 10
FLASK = [sys.executable, "-m", "flask", "--app", "wsgi"]


class Devserver:
    """A running supervisor, its environment and its combined output."""

    def __init__(self, tmp_path, redis_url, prefix):
        self.var_dir = tmp_path / "var"
        self.web_port = free_port()
        self.mail_port = free_port()
        self.redis_url = redis_url
        self.prefix = prefix
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        self.log_path = tmp_path / "devserver.log"
        self.env = {
            **os.environ,
            "PDAUTO_VAR_DIR": str(self.var_dir),
            "PDAUTO_INSTANCE_DIR": str(self.var_dir),
            "DATABASE_URL": os.environ.get(
                "PDAUTO_TEST_DATABASE_URL", f"sqlite:///{tmp_path / 'devserver.sqlite3'}"
            ),
            "REDIS_URL": redis_url,
            "PDAUTO_REDIS_PREFIX": prefix,
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(self.mail_port),
            "PORT": str(self.web_port),
            "SECRET_KEY": "devserver-test-secret",
            "PDAUTO_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
        }
        for name in ("PDAUTO_ENV", "PDAUTO_BASE_URL", "FLASK_DEBUG"):
            self.env.pop(name, None)
        self.process = None

    def migrate(self):
        subprocess.run(
            [*FLASK, "db", "upgrade"], cwd=ROOT, env=self.env, check=True, capture_output=True
        )

    def start(self):
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pdauto.devserver"],
                cwd=ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def output(self):
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text, timeout=START_SECONDS):
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None:
                pytest.fail(f"the devserver exited before printing {text!r}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the devserver did not print {text!r} in {timeout} s:\n{self.output()}"
                )
            time.sleep(0.1)

    def child_pids(self):
        """Return {name: pid} from the "started NAME (pid N)" lines."""
        found = re.findall(r"devserver: started (\w+) \(pid (\d+)\)", self.output())
        return {name: int(pid) for name, pid in found}

    def wait_for_exit(self, timeout=STOP_SECONDS):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the devserver did not exit within {timeout} s:\n{self.output()}")

    def clean_up(self):
        """Stop the supervisor and its children if a test left them running."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self.child_pids().values():
            if live_group_members(pid):
                os.killpg(pid, signal.SIGKILL)
        if "PDAUTO_TEST_DATABASE_URL" in os.environ:
            subprocess.run(
                [*FLASK, "db", "downgrade", "base"], cwd=ROOT, env=self.env, capture_output=True
            )


def live_group_members(pgid):
    """Return the PIDs in a process group that are running (zombies do not count).

    Without /proc (not Linux) it returns [pgid] while the group exists at all.
    """
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in brackets may contain spaces, so split after it.
        fields = stat.rsplit(")", 1)[1].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def wait_until_gone(pids, timeout=5.0):
    """Return the process groups of `pids` that still have live members after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {pid: live_group_members(pid) for pid in pids}
        alive = {pid: members for pid, members in alive.items() if members}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def port_is_closed(port):
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def make_devserver(tmp_path):
    started = []

    def make(redis_url, prefix):
        devserver = Devserver(tmp_path, redis_url, prefix)
        started.append(devserver)
        return devserver

    yield make
    for devserver in started:
        devserver.clean_up()


def log_in(base_url):
    session = requests.Session()
    page = session.get(f"{base_url}/login", timeout=5)
    assert page.status_code == 200
    assert 'name="password"' in page.text
    response = session.post(
        f"{base_url}/login",
        data={
            "csrf_token": csrf_token_from(page.text),
            "email": DEMO_EMAIL,
            "password": DEMO_PASSWORD,
        },
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == "/"
    return session


def wait_for_worker(connection, prefix, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        workers = [
            worker
            for worker in Worker.all(connection=connection)
            if f"{prefix}-default" in worker.queue_names()
        ]
        if workers or time.monotonic() > deadline:
            return workers
        time.sleep(0.1)


def wait_for_job(job, timeout=10.0):
    deadline = time.monotonic() + timeout
    while job.get_status(refresh=True) not in (JobStatus.FINISHED, JobStatus.FAILED):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return job


def wait_for_mail_file(directory, text, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        for path in sorted(directory.glob("*.eml")):
            if text in path.read_text(errors="replace"):
                return path
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def test_devserver_starts_redis_and_stops_all(make_devserver):
    redis_port = free_port()
    devserver = make_devserver(f"redis://127.0.0.1:{redis_port}/0", "devrun")
    devserver.migrate()
    devserver.start()
    devserver.wait_for_output(READY_LINE)

    output = devserver.output()
    assert f"pdauto is running at {devserver.base_url}/" in output
    assert f"log in as {DEMO_EMAIL} with the password {DEMO_PASSWORD}" in output
    assert f"RQ dashboard: {devserver.base_url}/rq" in output
    assert "loopback is allowed in this dev run" in output
    children = devserver.child_pids()
    assert sorted(children) == ["mailbox", "redis", "web", "worker"]

    health = requests.get(f"{devserver.base_url}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"

    session = log_in(devserver.base_url)
    assert DEMO_EMAIL in session.get(f"{devserver.base_url}/", timeout=5).text
    assert session.get(f"{devserver.base_url}/rq/", timeout=5).status_code == 200

    connection = redis.Redis.from_url(devserver.redis_url)
    try:
        assert wait_for_worker(connection, "devrun"), "no worker registered for devrun queues"
        job = Queue("devrun-default", connection=connection).enqueue("os.getpid", result_ttl=60)
        wait_for_job(job)
        assert job.get_status() == JobStatus.FINISHED
        # AppWorker runs jobs in its own process, so the job returns the worker's PID.
        assert job.return_value() == children["worker"]
    finally:
        connection.close()

    message = EmailMessage()
    message["From"] = "pdauto@localhost"
    message["To"] = "someone@example.com"
    message["Subject"] = "Local mailbox check"
    message.set_content("Hello from the devserver test.")
    with smtplib.SMTP("127.0.0.1", devserver.mail_port, timeout=5) as smtp:
        smtp.send_message(message)
    stored = wait_for_mail_file(devserver.var_dir / "mail", "Subject: Local mailbox check")
    assert stored is not None, "the message did not land in var/mail"
    assert "Delivered-To: someone@example.com" in stored.read_text()
    devserver.wait_for_output("mail to someone@example.com: Local mailbox check", timeout=5)

    devserver.process.send_signal(signal.SIGINT)
    assert devserver.wait_for_exit() == 0
    assert wait_until_gone(children.values()) == {}
    assert port_is_closed(redis_port)
    assert port_is_closed(devserver.web_port)
    assert port_is_closed(devserver.mail_port)
    assert "got SIGINT; stopping" in devserver.output()


def test_devserver_stops_all_when_child_dies(make_devserver, redis_server):
    devserver = make_devserver(redis_server.url, "devrun-dies")
    devserver.migrate()
    devserver.start()
    devserver.wait_for_output(READY_LINE)
    children = devserver.child_pids()
    assert sorted(children) == ["mailbox", "web", "worker"]
    assert "using the Redis server that responds at" in devserver.output()

    os.kill(children["worker"], signal.SIGKILL)

    assert devserver.wait_for_exit() == 1
    expected = f"worker (pid {children['worker']}) was killed by SIGKILL; stopping the others"
    assert expected in devserver.output()
    assert wait_until_gone(children.values()) == {}
    assert port_is_closed(devserver.web_port)
    assert port_is_closed(devserver.mail_port)
    # The supervisor did not start this Redis, so it leaves it running.
    assert redis.Redis.from_url(redis_server.url).ping()


def test_devserver_web_port_in_use(make_devserver):
    redis_port = free_port()
    devserver = make_devserver(f"redis://127.0.0.1:{redis_port}/0", "devrun-busy")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", devserver.web_port))
        busy.listen(1)
        devserver.start()
        assert devserver.wait_for_exit(START_SECONDS) == 1

    output = devserver.output()
    assert f"127.0.0.1:{devserver.web_port} is already in use; set PORT to a free port" in output
    assert devserver.child_pids() == {}
    assert port_is_closed(redis_port)


def test_create_user_if_missing(app):
    from pdauto.extensions import db
    from pdauto.models import User

    runner = app.test_cli_runner()
    arguments = ["create-user", "demo@example.com", "--account", "Demo", "--role", "admin"]

    with app.app_context():
        first = runner.invoke(args=[*arguments, "--password", "first-password", "--if-missing"])
        again = runner.invoke(args=[*arguments, "--password", "other-password", "--if-missing"])
        without_flag = runner.invoke(args=[*arguments, "--password", "other-password"])
        user = db.session.scalar(db.select(User).where(User.email == "demo@example.com"))

        assert first.exit_code == 0, first.output
        assert "created admin demo@example.com" in first.output
        assert again.exit_code == 0, again.output
        assert "already exists, left unchanged" in again.output
        assert without_flag.exit_code == 1
        assert "already exists" in without_flag.output
        assert user.check_password("first-password")
