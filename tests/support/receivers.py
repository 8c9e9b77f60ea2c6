"""Loopback HTTP receivers and listening sockets for tests that send real requests.

A pytest plugin: the main conftest loads it through `pytest_plugins`.

Fixtures
--------
receiver
    A started `Receiver`: a threaded HTTP/1.1 server on 127.0.0.1, on a free port,
    stopped after the test. It records every request and answers each path the way
    the test sets. Unknown paths get 200 with the body "ok".
tls_receiver
    The same over HTTPS, with a certificate for localhost, 127.0.0.1, ::1 and
    hooks.example.test signed by `test_ca`. Pass `tls_receiver.ca_path` to the
    client as its CA bundle, for example `Sender(..., verify=tls_receiver.ca_path)`.
make_receiver
    A factory for more receivers in one test, all stopped after it:
    `make_receiver(host="127.0.0.1", ssl_context=None)`. Use host="::1" for IPv6,
    and `tls_context(...)` or `self_signed_context(...)` for the TLS variants.
test_ca
    A `trustme.CA` for the whole session; `test_ca_path` is its PEM file.
make_listener
    `make_listener(host="127.0.0.1")` returns a `Listener`: a listening socket that
    never accepts by itself, so a test can check whether anything connected to it
    (`listener.connection_count()`).
full_backlog_address
    (host, port) of a listening socket whose accept queue is full, so a connect to
    it never completes and ends in a connect timeout.

Receiver API
------------
``receiver.url(path="/")``
    The URL of a path, such as "http://127.0.0.1:41234/hooks".
``receiver.host``, ``receiver.port``, ``receiver.base_url``
    Where it listens; ``base_url`` has no trailing slash.
``receiver.respond(path, status=200, body=b"ok", headers=None, delay=0.0)``
    Sets the response of one path (without the query). ``path="*"`` sets the answer
    for every path without its own. ``body`` is bytes or text, ``headers`` a mapping
    or (name, value) pairs, and ``delay`` the seconds to wait before answering.
    Content-Length is added unless the headers set it.
``receiver.respond_with(path, function)``
    For faults such as a trickle, an endless body or a reset: ``function(exchange)``
    writes the raw response itself. ``exchange.request`` is the recorded request,
    ``exchange.socket`` the connection, ``exchange.write(data)`` sends bytes and
    returns False once the client has gone, and ``exchange.wait(seconds)`` sleeps,
    returning True if the receiver is stopping, and ``exchange.reset()`` aborts the
    connection with a TCP reset. The connection is closed afterwards.
``receiver.requests``
    A copy of the recorded requests, oldest first.
``receiver.wait_for_requests(count, timeout=5.0)``
    Waits until at least `count` requests have arrived and returns them; fails the
    test on timeout.
``receiver.connection_count``
    How many TCP connections the receiver has accepted, so a test can check reuse.
``receiver.clear()``
    Forgets the recorded requests.

Each `RecordedRequest` has ``method``, ``path`` (with the query), ``headers`` (an
``http.client.HTTPMessage``: ``headers["webhook-id"]`` ignores case, ``get_all`` lists
repeats), ``body`` (bytes), ``client_address``, ``received_at`` (time.monotonic())
and the helpers ``json()``, ``form()`` and ``text()``.
"""

import datetime
import json
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TLS_HOSTNAMES = ("localhost", "127.0.0.1", "::1", "hooks.example.test")
HANDLER_IDLE_SECONDS = 30
STOP_JOIN_SECONDS = 5


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: object  # http.client.HTTPMessage
    body: bytes
    client_address: tuple
    received_at: float

    def json(self):
        return json.loads(self.body)

    def form(self):
        return dict(parse_qsl(self.body.decode("ascii"), keep_blank_values=True))

    def text(self):
        return self.body.decode("utf-8", errors="replace")


@dataclass
class _Rule:
    status: int = 200
    body: bytes = b"ok"
    headers: list = field(default_factory=list)
    delay: float = 0.0
    function: object = None


class Exchange:
    """One request being answered by a `respond_with` function."""

    def __init__(self, handler, request, stopping):
        self._handler = handler
        self.request = request
        self.socket = handler.connection
        self._stopping = stopping

    def write(self, data):
        """Send bytes; return False once the client has gone."""
        try:
            self._handler.wfile.write(data)
            self._handler.wfile.flush()
            return True
        except OSError:
            return False

    def wait(self, seconds):
        """Sleep; return True if the receiver is stopping."""
        return self._stopping.wait(seconds)

    def reset(self):
        """Abort the connection with a TCP reset instead of a normal close."""
        self._handler.close_connection = True
        linger = struct.pack("ii", 1, 0)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        # The handler's files still refer to the socket, so the kernel closes it,
        # and sends the reset, when the handler finishes. No FIN goes out first.
        self.socket.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = HANDLER_IDLE_SECONDS

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()
        self.server.receiver._connection_opened(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.receiver._connection_closed(self.connection)

    def do_POST(self):
        self._answer()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def _answer(self):
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=self.headers,
            body=self.rfile.read(length) if length else b"",
            client_address=self.client_address,
            received_at=time.monotonic(),
        )
        receiver._record(request)
        rule = receiver._rule_for(self.path.split("?", 1)[0])

        if rule.function is not None:
            self.close_connection = True
            rule.function(Exchange(self, request, receiver._stopping))
            return
        if rule.delay and receiver._stopping.wait(rule.delay):
            self.close_connection = True
            return

        self.send_response(rule.status)
        names = {name.lower() for name, _ in rule.headers}
        for name, value in rule.headers:
            self.send_header(name, value)
        has_body = rule.status >= 200 and rule.status not in (204, 304)
        if has_body and "content-length" not in names:
            self.send_header("Content-Length", str(len(rule.body)))
        self.end_headers()
        if has_body:
            self.wfile.write(rule.body)

    def log_message(self, format, *args):
        pass  # the recorded requests are the log


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, receiver, host, ssl_context):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.receiver = receiver
        self.ssl_context = ssl_context
        super().__init__((host, 0), _Handler)

    def get_request(self):
        sock, address = super().get_request()
        if self.ssl_context is not None:
            # The handshake runs in the handler thread, so a client that stalls
            # it cannot block the accept loop.
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def handle_error(self, request, client_address):
        # Clients in these tests cut connections on purpose (deadlines, body
        # limits, refused certificates), so errors in a handler are expected.
        pass


class Receiver:
    """A recording HTTP server on loopback; see the module docstring for its API."""

    def __init__(self, host="127.0.0.1", ssl_context=None, ca_path=None):
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests = []
        self._rules = {}
        self._connections = set()
        self._stopping = threading.Event()
        self.connection_count = 0
        self.ca_path = ca_path
        self._server = _Server(self, host, ssl_context)
        self.host = host
        self.port = self._server.server_address[1]
        scheme = "https" if ssl_context is not None else "http"
        shown_host = f"[{host}]" if ":" in host else host
        self.base_url = f"{scheme}://{shown_host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"receiver-{self.port}",
            daemon=True,
        )

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(STOP_JOIN_SECONDS)

    def url(self, path="/"):
        return self.base_url + path

    def respond(self, path, status=200, body=b"ok", headers=None, delay=0.0):
        if isinstance(body, str):
            body = body.encode("utf-8")
        items = headers.items() if hasattr(headers, "items") else headers or []
        rule = _Rule(status=status, body=body, headers=list(items), delay=delay)
        with self._lock:
            self._rules[path] = rule

    def respond_with(self, path, function):
        with self._lock:
            self._rules[path] = _Rule(function=function)

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"the receiver got {len(self._requests)} requests in "
                        f"{timeout} s, expected {count}"
                    )
                self._arrived.wait(left)
            return list(self._requests)

    def clear(self):
        with self._lock:
            self._requests.clear()

    def _record(self, request):
        with self._arrived:
            self._requests.append(request)
            self._arrived.notify_all()

    def _rule_for(self, path):
        with self._lock:
            return self._rules.get(path) or self._rules.get("*") or _Rule()

    def _connection_opened(self, connection):
        with self._lock:
            self._connections.add(connection)
            self.connection_count += 1

    def _connection_closed(self, connection):
        with self._lock:
            self._connections.discard(connection)


class Listener:
    """A listening socket that accepts only when asked, to count connections."""

    def __init__(self, host="127.0.0.1", backlog=16):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.bind((host, 0))
        self.socket.listen(backlog)
        self.socket.setblocking(False)
        self.host = host
        self.port = self.socket.getsockname()[1]
        self._accepted = 0

    def connection_count(self):
        """Accept every connection waiting in the queue and return the total so far.

        A client's connect() returns only after the kernel queued the connection,
        so once a client call has returned, its connection is counted here.
        """
        while True:
            try:
                connection, _ = self.socket.accept()
            except BlockingIOError:
                return self._accepted
            connection.close()
            self._accepted += 1

    def close(self):
        self.socket.close()


def _full_backlog_listener(host="127.0.0.1", probe_timeout=0.2, max_fillers=64):
    """Return (listening socket, filler sockets) for a listener whose queue is full.

    With a backlog of 0, Linux queues one connection and then drops further SYNs, so
    later connects stay unanswered. The probe keeps filling until a connect times out.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(max_fillers):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.settimeout(probe_timeout)
        try:
            filler.connect(address)
        except TimeoutError:
            filler.close()
            return listener, fillers
        fillers.append(filler)
    for filler in fillers:
        filler.close()
    listener.close()
    raise RuntimeError(f"the listen queue of {address} never filled up")


def tls_context(ca, *hostnames):
    """Return a server SSLContext with a certificate for `hostnames` issued by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(hostnames or TLS_HOSTNAMES)).configure_cert(context)
    return context


def self_signed_context(directory, *hostnames):
    """Return a server SSLContext with a self-signed certificate for `hostnames`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    alternative_names = [x509.DNSName(hostname) for hostname in hostnames]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "self-signed.pem"
    key_path = directory / "self-signed.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


@pytest.fixture(scope="session")
def test_ca():
    return trustme.CA()


@pytest.fixture(scope="session")
def test_ca_path(test_ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def make_receiver():
    started = []

    def make(host="127.0.0.1", ssl_context=None, ca_path=None):
        receiver = Receiver(host, ssl_context, ca_path).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


@pytest.fixture
def receiver(make_receiver):
    return make_receiver()


@pytest.fixture
def tls_receiver(make_receiver, test_ca, test_ca_path):
    return make_receiver(ssl_context=tls_context(test_ca), ca_path=test_ca_path)


@pytest.fixture
def make_listener():
    listeners = []

    def make(host="127.0.0.1"):
        listener = Listener(host)
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        listener.close()


@pytest.fixture
def full_backlog_address():
    listener, fillers = _full_backlog_listener()
    yield listener.getsockname()
    for filler in fillers:
        filler.close()
    listener.close()
