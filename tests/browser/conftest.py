"""Browser tests: pdauto served on loopback, a real RQ worker, and Chromium.

Chromium comes from the operating system (Debian: `apt-get install chromium`),
because Playwright cannot download its own browser here. The executable is
`chromium` on PATH, or the path in the environment variable PDAUTO_CHROMIUM.
Without it these tests fail; set PDAUTO_SKIP_BROWSER=1 to skip them instead.

Fixtures
--------
live_server
    The test's `app` served by werkzeug on a free 127.0.0.1 port, in a thread.
    ``live_server.url(path)`` returns a full URL.
rq_worker
    A pdauto RQ worker, with its scheduler, in a subprocess on the test's
    database and queues; started before the test and stopped after it.
chromium_browser
    One headless Chromium for every test in this package.
browser_errors
    The console errors and uncaught page errors of every page the test opens.
    A test that leaves any of them fails.
new_browser_page
    ``new_browser_page(width=1280, height=800)`` opens a page in a fresh
    browser context (its own cookies) whose errors go to `browser_errors`.
browser_page
    One desktop-sized page.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from werkzeug.serving import make_server

from tests.conftest import PASSWORD

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_HINT = (
    "Install it with `apt-get install chromium` (Debian), or set PDAUTO_CHROMIUM to the "
    "path of a Chromium executable. Set PDAUTO_SKIP_BROWSER=1 to skip the browser tests."
)
# Playwright waits this long for an element or a navigation before failing.
DEFAULT_TIMEOUT_MS = 10_000
WORKER_START_SECONDS = 20
WORKER_STOP_SECONDS = 5
SERVER_STOP_SECONDS = 5
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
BROWSER_TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PDAUTO_SKIP_BROWSER") != "1":
        return
    skip = pytest.mark.skip(reason="PDAUTO_SKIP_BROWSER=1 is set")
    for item in items:
        if BROWSER_TESTS_DIR in Path(item.path).resolve().parents:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Fail a test that passed but left browser console errors or page errors."""
    result = yield
    errors = getattr(item, "funcargs", {}).get("browser_errors")
    if errors is not None and errors.messages:
        pytest.fail("errors in the browser:\n" + "\n".join(errors.messages), pytrace=False)
    return result


@pytest.fixture
def app_overrides():
    # CSRF is on so that the forms and htmx requests are checked as in production.
    return {"WTF_CSRF_ENABLED": True, "TEST_NOW_TIMEOUT_SECONDS": 2.0}


class LiveServer:
    """A WSGI app served on 127.0.0.1 by werkzeug's threaded server."""

    def __init__(self, app):
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.base_url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"live-server-{self._server.server_port}",
            daemon=True,
        )

    def url(self, path="/"):
        return self.base_url + path

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(SERVER_STOP_SECONDS)


@pytest.fixture
def live_server(app):
    server = LiveServer(app).start()
    yield server
    server.stop()


def portable_config(app):
    """Return the app's settings that JSON can carry to another process."""
    config = {}
    for key, value in app.config.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        config[key] = value
    return config


@pytest.fixture
def rq_worker(app, tmp_path):
    """Run a pdauto worker in a subprocess until the test ends, and yield its Popen."""
    from rq import Worker

    from pdauto import queue

    config = portable_config(app)
    config["PDAUTO_TEST_WORKER_NAME"] = f"browser-test-{os.getpid()}-{tmp_path.name}"
    config_path = tmp_path / "worker-config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    log_path = tmp_path / "worker.log"

    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.browser.worker_process", str(config_path)],
            cwd=REPOSITORY_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Its own process group, so that stopping it also stops the RQ
            # scheduler process it forks.
            start_new_session=True,
        )
    try:
        with app.app_context():
            deliveries_queue = queue.get_queue("deliveries")
            deadline = time.monotonic() + WORKER_START_SECONDS
            while Worker.count(queue=deliveries_queue) == 0:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"the RQ worker did not start in {WORKER_START_SECONDS} s "
                        f"(exit code {process.poll()}); its log:\n{log_path.read_text()}"
                    )
                time.sleep(0.1)
        yield process
    finally:
        stop_process_group(process)


def stop_process_group(process):
    """Ask a process group started by a fixture to stop, and kill it if it does not."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(WORKER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        # NOTE: RQ 3.0.0 with redis-py 8.2.0 sometimes waits 60 s for its pubsub
        # thread on a warm shutdown. Killing a test worker loses nothing.
        pass
    except ProcessLookupError:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def chromium_executable():
    """Return the Chromium to drive, or fail the test with how to install it."""
    configured = os.environ.get("PDAUTO_CHROMIUM")
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            pytest.fail(f"PDAUTO_CHROMIUM={configured} is not an executable file. {INSTALL_HINT}")
        return configured
    found = shutil.which("chromium")
    if not found:
        pytest.fail(f"Chromium is not installed: no `chromium` on PATH. {INSTALL_HINT}")
    return found


@pytest.fixture(scope="package")
def chromium_browser():
    """Launch one headless Chromium for the package and close it afterwards.

    Package scope, not session scope, because Playwright's sync API keeps an
    asyncio event loop in the main thread while it runs.
    """
    executable = chromium_executable()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: run `pip install -e '.[dev]'`.")

    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    finally:
        playwright.stop()


class BrowserErrors:
    """The console errors and uncaught errors of a test's pages.

    Chromium logs every response with a 4xx or 5xx status as a console error. A
    test that expects one, such as 401 for a wrong password, declares it with
    `allow_status`. Everything else counts as an error.
    """

    def __init__(self):
        self.messages = []
        self._allowed_statuses = set()

    def allow_status(self, status, path):
        """Accept the console error of a response with `status` for URL `path`."""
        self._allowed_statuses.add((status, path))

    def watch(self, page):
        page.on("console", lambda message: self._on_console(page, message))
        page.on("pageerror", lambda error: self._on_page_error(page, error))

    def _on_console(self, page, message):
        if message.type != "error":
            return
        path = urlsplit(message.location.get("url", "")).path
        for status, allowed_path in self._allowed_statuses:
            if f"status of {status} " in message.text and path == allowed_path:
                return
        self.messages.append(f"console error on {page.url}: {message.text} at {message.location}")

    def _on_page_error(self, page, error):
        self.messages.append(f"uncaught error on {page.url}: {error}")


@pytest.fixture
def browser_errors():
    return BrowserErrors()


@pytest.fixture
def new_browser_page(chromium_browser, browser_errors):
    contexts = []

    def open_page(width=1280, height=800):
        context = chromium_browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        context.on("page", browser_errors.watch)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def browser_page(new_browser_page):
    return new_browser_page()


def log_in(page, live_server, email, password=PASSWORD):
    """Log in through the login form and wait for the home page."""
    page.goto(live_server.url("/login"))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(live_server.url("/"))
