"""Outbound webhooks: build, sign and send one Call API request, and report the result.

Every webhook, from the worker, Test Now or a benchmark, goes through `Sender.send`,
which returns an `Outcome` and never raises for network trouble or bad input.

The request follows the Standard Webhooks specification: a POST with the headers
webhook-id, webhook-timestamp and webhook-signature ("v1," and the base64 HMAC-SHA256
of "id.timestamp.body" under each "whsec_" secret). Redirects are never followed, TLS
certificates are always verified, the whole exchange has one deadline, and at most
`max_body_bytes` of a response body are read.

The address policy (`pdauto.addresses`) is applied to the address a socket actually
connects to: each new connection resolves the host once, checks every answer and
connects to a checked address, while the Host header, TLS SNI and certificate
verification keep using the host name. A name that resolves to a public address for
the check and to a private one a moment later (DNS rebinding) therefore cannot lead
the connection inside. Environment proxy settings are ignored, because a proxy would
resolve the name itself.
"""

import base64
import binascii
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import string
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import NamedTuple
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit

import idna
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import IncompleteRead as Urllib3IncompleteRead
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.ssl_match_hostname import CertificateError as HostnameMismatch

from .addresses import (
    AddressNotAllowed,
    AddressPolicy,
    ends_in_number,
    parse_ipv4_host,
)

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_USER_AGENT",
    "FORM",
    "JSON",
    "PERMANENT_KINDS",
    "AddressNotAllowed",
    "AddressPolicy",
    "InvalidURL",
    "Outcome",
    "Sender",
    "WebhookRequest",
    "build_body",
    "mask_url",
    "normalize_url",
    "sign",
    "validate_custom_headers",
]

log = logging.getLogger(__name__)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
CONTENT_TYPES = (JSON, FORM)

MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

SECRET_PREFIX = "whsec_"

# Outcome kinds that a later attempt cannot fix.
PERMANENT_KINDS = frozenset({"invalid_url", "invalid_request", "address_not_allowed", "gone"})


def _package_version():
    try:
        return version("pdauto")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0"


DEFAULT_USER_AGENT = f"pdauto/{_package_version()}"


# --- URLs ---------------------------------------------------------------------


class InvalidURL(ValueError):
    """A webhook URL that cannot be used. The message is written for a form error."""


class _Target(NamedTuple):
    """A parsed, normalized webhook URL."""

    url: str
    scheme: str
    host: str  # punycode name (a trailing dot kept), dotted IPv4, or bare IPv6
    port: int
    request_target: str  # path and query, as sent in the request line
    username: str | None  # percent-decoded
    password: str | None


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_WEBHOOK_ID = re.compile(r"[!-~]{1,256}")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_USERINFO_SAFE = "%!$&'()*+,;=:-._~"
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = "/?%!$&'()*+,;=:@-._~"


def normalize_url(raw):
    """Return the canonical form of a webhook URL, the one to store and to send to.

    Strips surrounding whitespace, accepts only http and https with a host, converts
    an internationalized host name to punycode and an IPv4 host in any spelling to
    dotted decimal, drops the fragment and a default port. Raises InvalidURL with a
    message for the user.
    """
    return _parse_url(raw).url


def mask_url(url):
    """Return the URL with its password, or a lone user name, replaced by ***.

    Works on any text, valid URL or not, so that it is safe to use on user input.
    """
    if not isinstance(url, str):
        return url
    scheme_end = url.find("://")
    start = 0 if scheme_end == -1 else scheme_end + 3
    end = len(url)
    for separator in "/?#":
        index = url.find(separator, start)
        if index != -1:
            end = min(end, index)
    at = url.rfind("@", start, end)
    if at == -1:
        return url
    user, colon, _ = url[start:at].partition(":")
    masked = f"{user}:***" if colon else "***"
    return url[:start] + masked + url[at:]


@lru_cache(maxsize=512)
def _parse_url(raw):
    if not isinstance(raw, str):
        raise InvalidURL("The URL must be text.")
    text = raw.strip()
    if not text:
        raise InvalidURL("Enter a URL that starts with http:// or https://.")
    _check_length(text)
    if _CONTROL_CHARACTERS.search(text):
        raise InvalidURL("The URL contains a line break or another control character.")

    try:
        parts = urlsplit(text)
    except ValueError as error:
        raise InvalidURL(f"The URL cannot be read: {error}.") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise InvalidURL(_scheme_message(parts.scheme))
    if not text[len(scheme) + 1 :].startswith("//") or not parts.netloc:
        raise InvalidURL(f"The URL has no host name after {scheme}://.")

    userinfo, at, host_and_port = parts.netloc.rpartition("@")
    if "\\" in parts.netloc:
        raise InvalidURL("The host part of the URL contains a backslash.")
    host, display_host, port_text = _split_host_and_port(host_and_port)
    port = _parse_port(port_text, scheme)

    username = password = None
    netloc = ""
    if at:
        userinfo = quote(userinfo, safe=_USERINFO_SAFE)
        user_part, colon, password_part = userinfo.partition(":")
        username = unquote(user_part)
        password = unquote(password_part) if colon else ""
        netloc = userinfo + "@"
    netloc += display_host
    if port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"

    path = quote(parts.path, safe=_PATH_SAFE) or "/"
    query = quote(parts.query, safe=_QUERY_SAFE)
    request_target = f"{path}?{query}" if query else path
    url = f"{scheme}://{netloc}{request_target}"
    _check_length(url)
    return _Target(url, scheme, host, port, request_target, username, password)


def _check_length(text):
    if len(text) > MAX_URL_LENGTH:
        raise InvalidURL(
            f"The URL is {len(text):,} characters long, over the limit of {MAX_URL_LENGTH:,}."
        )


def _scheme_message(scheme):
    allowed = "The URL must start with http:// or https://, the only schemes allowed"
    if not scheme:
        return allowed + "."
    return f'{allowed}, not "{scheme}:".'


def _split_host_and_port(host_and_port):
    """Return (host, host as written in a URL, port text) from the authority."""
    if host_and_port.startswith("["):
        inside, bracket, port_part = host_and_port[1:].partition("]")
        if not bracket or (port_part and not port_part.startswith(":")):
            raise InvalidURL("The IPv6 address in the URL is not closed by ].")
        try:
            if "%" in inside:
                raise ValueError("zone identifiers are not allowed")
            address = ipaddress.IPv6Address(inside)
        except ValueError as error:
            raise InvalidURL(f"The host [{inside}] is not a valid IPv6 address: {error}.") from None
        return str(address), f"[{address}]", port_part[1:]

    if host_and_port.count(":") > 1:
        raise InvalidURL("An IPv6 address in a URL must be written in brackets.")
    host_text, _, port_text = host_and_port.partition(":")
    host = _normalize_host_name(host_text)
    return host, host, port_text


def _normalize_host_name(host_text):
    if not host_text:
        raise InvalidURL("The URL has no host name.")
    if not host_text.isascii():
        try:
            host_text = idna.encode(host_text, uts46=True).decode("ascii")
        except idna.IDNAError as error:
            raise InvalidURL(
                f"The host name {host_text} is not a valid internationalized domain name: {error}."
            ) from None
    host = host_text.lower()

    if ends_in_number(host):
        try:
            return str(parse_ipv4_host(host))
        except ValueError as error:
            raise InvalidURL(
                f"The host {host} reads as an IPv4 address but is not a valid one: {error}."
            ) from None

    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > 253 or not all(_is_valid_label(label) for label in labels):
        raise InvalidURL(
            f"The host name {host} is not valid. A host name is made of labels of "
            "letters, digits and hyphens, separated by dots."
        )
    return host


def _is_valid_label(label):
    if not _HOST_LABEL.match(label):
        return False
    if label.startswith("xn--"):
        try:
            idna.decode(label)
        except idna.IDNAError:
            return False
    return True


def _parse_port(port_text, scheme):
    if not port_text:
        return DEFAULT_PORTS[scheme]
    if not (port_text.isascii() and port_text.isdigit()) or not (0 < int(port_text) < 65536):
        raise InvalidURL(f"The port {port_text} in the URL is not a number from 1 to 65535.")
    return int(port_text)


# --- Signatures, headers and bodies ---------------------------------------------


def sign(secret, msg_id, timestamp, body):
    """Return the Standard Webhooks signature "v1,<base64>" of one message.

    `secret` is "whsec_" followed by the base64 key. Raises ValueError for a secret
    in another form.
    """
    key = _secret_key(secret)
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _secret_key(secret):
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError('A signing secret must start with "whsec_".')
    encoded = secret[len(SECRET_PREFIX) :].rstrip("=")
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError('A signing secret must be "whsec_" and base64 text.') from None
    if not key:
        raise ValueError("A signing secret must not be empty.")
    return key


_TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)
_SET_BY_PDAUTO = {
    "host": "pdauto sets it from the URL",
    "content-length": "pdauto computes it from the body",
    "content-type": "the content type setting chooses it",
    "user-agent": "pdauto names itself in it",
    "expect": "it changes how the request is sent",
}
MAX_CUSTOM_HEADERS = 50
MAX_HEADER_NAME_LENGTH = 256
MAX_HEADER_VALUE_LENGTH = 4096


def validate_custom_headers(pairs):
    """Return custom headers as a list of (name, value), stripped of outer spaces.

    Accepts a mapping or (name, value) pairs. Raises ValueError naming the first
    header that is refused: Host, Content-Length, Content-Type, User-Agent, Expect,
    hop-by-hop and Proxy-* headers, the webhook-* headers, duplicates, and names or
    values with line breaks or characters that HTTP does not allow.
    """
    items = pairs.items() if hasattr(pairs, "items") else pairs
    headers = []
    seen = set()
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError("Custom header names and values must be text.")
        name = name.strip()
        value = value.strip(" \t")
        _validate_header_name(name)
        lowered = name.lower()
        if lowered in seen:
            raise ValueError(f"The header {name} is given more than once.")
        seen.add(lowered)
        _validate_header_value(name, value)
        headers.append((name, value))

    if len(headers) > MAX_CUSTOM_HEADERS:
        raise ValueError(f"At most {MAX_CUSTOM_HEADERS} custom headers are allowed.")
    return headers


def _validate_header_name(name):
    if not name:
        raise ValueError("A custom header has no name.")
    if len(name) > MAX_HEADER_NAME_LENGTH:
        raise ValueError(f"The header name {name[:40]}... is too long.")
    if not set(name) <= _TOKEN_CHARACTERS:
        raise ValueError(
            f"The header name {name!r} contains characters that are not allowed. "
            "Use letters, digits and - only."
        )

    lowered = name.lower()
    reason = _SET_BY_PDAUTO.get(lowered)
    if lowered in _HOP_BY_HOP or lowered.startswith("proxy-"):
        reason = "it is a hop-by-hop header, which never reaches the receiver"
    elif lowered.startswith("webhook-"):
        reason = "the webhook-* headers carry the Standard Webhooks signature"
    if reason:
        raise ValueError(f"The header {name} cannot be set as a custom header: {reason}.")


def _validate_header_value(name, value):
    if len(value) > MAX_HEADER_VALUE_LENGTH:
        raise ValueError(f"The value of the header {name} is too long.")
    if "\r" in value or "\n" in value:
        raise ValueError(f"The value of the header {name} contains a line break.")
    if not all(char == "\t" or " " <= char <= "~" for char in value):
        raise ValueError(
            f"The value of the header {name} may contain only printable ASCII characters."
        )


@dataclass(frozen=True)
class WebhookRequest:
    """One webhook to send.

    Credentials in `url` (user:password@) are sent as Basic auth and never shown.
    There is one signature per secret, so a rotation sends the old and new ones.
    """

    url: str
    payload: dict
    webhook_id: str
    secrets: tuple[str, ...] = ()
    content_type: str = JSON
    custom_headers: tuple[tuple[str, str], ...] = ()
    timestamp: int | None = None  # Unix seconds; the time of sending when None


def build_body(request):
    """Encode the payload as compact JSON (keys in order) or as a form.

    In a form, true and false are written in lower case, None as an empty value,
    and nested lists and objects as compact JSON. Raises ValueError or TypeError
    for a payload that cannot be encoded.
    """
    if not isinstance(request.payload, dict):
        raise ValueError("The webhook payload must be a mapping of field names.")
    if request.content_type == JSON:
        text = json.dumps(
            request.payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    if request.content_type == FORM:
        fields = [(str(key), _form_value(value)) for key, value in request.payload.items()]
        return urlencode(fields).encode("ascii")
    raise ValueError(
        f"The content type {request.content_type!r} is not supported. Use {JSON} or {FORM}."
    )


def _form_value(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


# --- Outcomes -------------------------------------------------------------------


@dataclass
class Outcome:
    """The result of one webhook request, in the terms the delivery log shows."""

    succeeded: bool  # True only for a 2xx whose body arrived in time
    kind: str  # "success", "http_error", "redirect", "timeout", ...
    error: str  # plain words; "" on success
    status: int | None
    reason: str
    response_headers: dict[str, str]
    response_body: str  # the first max_body_bytes, decoded with errors="replace"
    duration_ms: float
    retry_after_seconds: float | None  # from Retry-After on 429 and 503, capped
    retryable: bool
    request_url: str  # credentials masked
    request_headers: dict[str, str]  # as sent, the Authorization value masked
    request_body: str
    response_truncated: bool = False
    remote_address: str = ""  # "ip:port" of the peer, when a connection was made


# --- Transport --------------------------------------------------------------------

# The deadline of the send running on this thread, as a time.monotonic() value.
# A connection is used by one thread at a time, so its socket reads the deadline
# of the thread that is using it.
_current_send = threading.local()


def _seconds_left():
    """Return the seconds before this thread's send deadline, or None outside a send.

    Raises TimeoutError once the deadline has passed.
    """
    deadline = getattr(_current_send, "deadline", None)
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the time limit for the whole request ran out")
    return left


class _DeadlineSocketMixin:
    """Bound every blocking call by the send deadline.

    A socket timeout applies to one call, so a receiver that sends one byte a second
    would never trip it. Setting the timeout to the time left before each call makes
    the sum of all calls end at the deadline.
    """

    def _apply_deadline(self):
        left = _seconds_left()
        if left is not None:
            self.settimeout(left)

    def recv(self, *args, **kwargs):
        self._apply_deadline()
        return super().recv(*args, **kwargs)

    def recv_into(self, *args, **kwargs):
        self._apply_deadline()
        return super().recv_into(*args, **kwargs)

    def send(self, *args, **kwargs):
        self._apply_deadline()
        return super().send(*args, **kwargs)

    def sendall(self, *args, **kwargs):
        self._apply_deadline()
        return super().sendall(*args, **kwargs)


class _DeadlineSocket(_DeadlineSocketMixin, socket.socket):
    pass


class _DeadlineSSLSocket(_DeadlineSocketMixin, ssl.SSLSocket):
    def do_handshake(self, *args, **kwargs):
        self._apply_deadline()
        return super().do_handshake(*args, **kwargs)


class _ConnectFailed(Exception):
    """No checked address of the host accepted a connection."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class _ResolutionFailed(Exception):
    """The host name did not resolve to any address."""


def _system_resolver(host, port):
    # NOTE: getaddrinfo takes no timeout, so a slow DNS server can make a send
    # outlast its total deadline; the connect and everything after it are bounded.
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def _is_localhost(host):
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _socket_address_text(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class _Connector:
    """Resolve a host once, check every address, and connect to a checked one."""

    # Bounds the connect time of a name with many addresses to a few timeouts.
    max_attempts = 4

    def __init__(self, policy, resolver, connect_timeout):
        self.policy = policy
        self.resolver = resolver
        self.connect_timeout = connect_timeout

    def connect(self, host, port, socket_options):
        addresses = self.checked_addresses(host, port)
        failure = None
        for address in addresses[: self.max_attempts]:
            where = _socket_address_text(address, port)
            try:
                timeout = min(self.connect_timeout, _seconds_left() or float("inf"))
            except TimeoutError:
                break
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = _DeadlineSocket(family, socket.SOCK_STREAM)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                sock.connect((address, port))
                return sock
            except TimeoutError:
                sock.close()
                failure = _ConnectFailed(
                    "connect_timeout",
                    f"timed out connecting to {where} after {timeout:.3g} s",
                )
            except ConnectionRefusedError:
                sock.close()
                failure = _ConnectFailed("connection_refused", f"connection refused by {where}")
            except OSError as error:
                sock.close()
                failure = _ConnectFailed(
                    "connection_error",
                    f"could not connect to {where}: {error.strerror or error}",
                )
        raise failure or _ConnectFailed("connect_timeout", f"timed out before connecting to {host}")

    def checked_addresses(self, host, port):
        """Return the addresses to try for `host`, or raise AddressNotAllowed."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            self.policy.check(literal)
            return [str(literal)]

        if _is_localhost(host):
            # Names under localhost always mean this machine, so they are answered
            # here instead of being sent to a DNS server.
            addresses = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
        else:
            addresses = self._resolve(host, port)
        for address in addresses:
            self.policy.check(address, host=host)
        return [str(address) for address in addresses]

    def _resolve(self, host, port):
        try:
            answers = self.resolver(host, port)
        except OSError as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise _ResolutionFailed(f"could not resolve {host}: {reason}") from None
        addresses = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(str(answer))
            except ValueError:
                raise _ResolutionFailed(
                    f"could not resolve {host}: the resolver returned {answer!r}, "
                    "which is not an IP address"
                ) from None
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise _ResolutionFailed(f"could not resolve {host}: no addresses found")
        return addresses


class _PinnedConnectionMixin:
    """An urllib3 connection whose socket comes from the `_Connector`.

    urllib3 keeps using the host name for the Host header, TLS SNI and certificate
    verification; only the choice of address moves here.
    """

    def __init__(self, *args, connector, dns_host, **kwargs):
        super().__init__(*args, **kwargs)
        self._connector = connector
        self._dns_name = dns_host

    def _new_conn(self):
        return self._connector.connect(self._dns_name, self.port, self.socket_options)


class _PinnedHTTPConnection(_PinnedConnectionMixin, HTTPConnection):
    pass


class _PinnedHTTPSConnection(_PinnedConnectionMixin, HTTPSConnection):
    pass


class _PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


def _make_ssl_context(verify):
    if verify is True:
        context = ssl.create_default_context()
    elif isinstance(verify, str | os.PathLike):
        context = ssl.create_default_context(cafile=os.fspath(verify))
    else:
        raise ValueError(
            "verify must be True or the path of a CA bundle; certificate "
            "verification cannot be turned off."
        )
    context.sslsocket_class = _DeadlineSSLSocket
    return context


# --- Sending --------------------------------------------------------------------


class _Prepared(NamedTuple):
    target: _Target
    body: bytes
    headers: dict[str, str]  # as given to urllib3
    recorded_headers: dict[str, str]  # as shown in the log, secrets masked
    masked_url: str


class Sender:
    """Send webhooks, keeping a pool of open connections per host between sends.

    One Sender may be shared by threads: pools are locked and the deadline of each
    send is kept per thread. `resolver(host, port)` returns IP address strings and
    defaults to socket.getaddrinfo; tests inject one to simulate DNS. `verify` is
    True for the system's trusted CAs, or the path of a CA bundle file.
    """

    def __init__(
        self,
        policy,
        *,
        connect_timeout,
        total_timeout,
        max_body_bytes=65536,
        max_retry_after_seconds=3600,
        user_agent=DEFAULT_USER_AGENT,
        resolver=None,
        verify=True,
        max_connections_per_host=10,
        max_hosts=100,
    ):
        if connect_timeout <= 0 or total_timeout <= 0:
            raise ValueError("connect_timeout and total_timeout must be above 0 s.")
        self.policy = policy
        self.connect_timeout = min(connect_timeout, total_timeout)
        self.total_timeout = total_timeout
        self.max_body_bytes = max_body_bytes
        self.max_retry_after_seconds = max_retry_after_seconds
        self.user_agent = user_agent
        self.max_connections_per_host = max_connections_per_host
        self.max_hosts = max_hosts
        self._connector = _Connector(policy, resolver or _system_resolver, self.connect_timeout)
        self._ssl_context = _make_ssl_context(verify)
        self._timeout = urllib3.Timeout(connect=self.connect_timeout, read=total_timeout)
        self._pools = OrderedDict()
        self._lock = threading.Lock()

    def send(self, request):
        """Send one webhook and return its Outcome; network trouble is not raised."""
        started = time.monotonic()
        try:
            prepared = self._prepare(request)
        except InvalidURL as error:
            return self._refused(request, "invalid_url", str(error), started)
        except (ValueError, TypeError) as error:
            return self._refused(request, "invalid_request", str(error), started)

        _current_send.deadline = started + self.total_timeout
        try:
            outcome = self._exchange(prepared, started)
        finally:
            _current_send.deadline = None

        if outcome.kind == "address_not_allowed":
            log.warning(
                "Webhook %s to %s refused: %s",
                request.webhook_id,
                outcome.request_url,
                outcome.error,
            )
        elif not outcome.succeeded:
            log.info(
                "Webhook %s to %s failed (%s): %s",
                request.webhook_id,
                outcome.request_url,
                outcome.kind,
                outcome.error,
            )
        return outcome

    def close(self):
        """Close every pooled connection; the Sender can still send afterwards."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _prepare(self, request):
        target = _parse_url(request.url)
        custom_headers = validate_custom_headers(request.custom_headers)
        webhook_id = request.webhook_id
        if not isinstance(webhook_id, str) or not _WEBHOOK_ID.fullmatch(webhook_id):
            raise ValueError(
                "The webhook id must be 1 to 256 printable ASCII characters without spaces."
            )

        body = build_body(request)
        timestamp = int(time.time()) if request.timestamp is None else request.timestamp
        headers = {
            "Content-Type": request.content_type,
            "User-Agent": self.user_agent,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(timestamp)),
        }
        if request.secrets:
            headers["webhook-signature"] = " ".join(
                sign(secret, webhook_id, timestamp, body) for secret in request.secrets
            )
        headers.update(custom_headers)

        if target.username is not None:
            if any(name.lower() == "authorization" for name, _ in custom_headers):
                raise ValueError(
                    "The URL has credentials and there is also a custom Authorization "
                    "header. Keep only one of them."
                )
            credentials = f"{target.username}:{target.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()

        recorded = {"Host": _host_header(target), **headers}
        recorded["Content-Length"] = str(len(body))
        for name in recorded:
            if name.lower() == "authorization":
                recorded[name] = _mask_authorization(recorded[name])
            elif SECRET_HEADER_WORDS.search(name):
                recorded[name] = "***"
        return _Prepared(target, body, headers, recorded, mask_url(target.url))

    def _exchange(self, prepared, started):
        record = _Record(self, prepared, started)
        try:
            pool = self._pool_for(prepared.target)
            response = pool.urlopen(
                "POST",
                prepared.target.request_target,
                body=prepared.body,
                headers=prepared.headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                timeout=self._timeout,
                preload_content=False,
                decode_content=False,
                release_conn=False,
            )
        except AddressNotAllowed as error:
            return record.failure("address_not_allowed", str(error))
        except Exception as error:  # every transport error becomes an Outcome
            kind, message = _describe_error(error, BEFORE_RESPONSE, self.total_timeout)
            return record.failure(kind, message)

        try:
            remote = response.connection.sock.getpeername()
        except (AttributeError, OSError):
            remote = ()
        record.remote_address = _socket_address_text(remote[0], remote[1]) if remote else ""
        try:
            body, truncated = self._read_body(response)
        except Exception as error:  # a broken body is an Outcome too
            response.close()
            response.release_conn()
            kind, message = _describe_error(error, READING_BODY, self.total_timeout)
            return record.failure(kind, message, response=response)
        return record.response(response, body, truncated)

    def _read_body(self, response):
        """Return (the first max_body_bytes of the body, whether more followed).

        Reads until the end of the body, so that a body cut short by the receiver
        raises instead of passing for a complete one.
        """
        data = bytearray()
        while len(data) <= self.max_body_bytes:
            chunk = response.read(min(65536, self.max_body_bytes + 1 - len(data)))
            if not chunk:
                response.release_conn()
                return bytes(data), False
            data += chunk

        # Unread bytes would corrupt the next request on this connection.
        response.close()
        response.release_conn()
        return bytes(data[: self.max_body_bytes]), True

    def _pool_for(self, target):
        key = (target.scheme, target.host, target.port)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            pool = self._new_pool(target)
            self._pools[key] = pool
            evicted = None
            if len(self._pools) > self.max_hosts:
                _, evicted = self._pools.popitem(last=False)
        if evicted is not None:
            evicted.close()
        return pool

    def _new_pool(self, target):
        options = {
            "maxsize": self.max_connections_per_host,
            "block": False,
            "retries": False,
            "timeout": self._timeout,
            "connector": self._connector,
            "dns_host": target.host,
        }
        if target.scheme == "https":
            return _PinnedHTTPSConnectionPool(
                target.host, target.port, ssl_context=self._ssl_context, **options
            )
        return _PinnedHTTPConnectionPool(target.host, target.port, **options)

    def _refused(self, request, kind, message, started):
        return Outcome(
            succeeded=False,
            kind=kind,
            error=message,
            status=None,
            reason="",
            response_headers={},
            response_body="",
            duration_ms=(time.monotonic() - started) * 1000,
            retry_after_seconds=None,
            retryable=False,
            request_url=mask_url(str(getattr(request, "url", "")))[:MAX_URL_LENGTH],
            request_headers={},
            request_body="",
        )


class _Record:
    """Collect what was sent, and turn a response or a failure into an Outcome."""

    def __init__(self, sender, prepared, started):
        self.sender = sender
        self.prepared = prepared
        self.started = started
        self.remote_address = ""

    def failure(self, kind, message, response=None):
        if response is None:
            return self._outcome(
                kind=kind, error=message, status=None, reason="", response_headers={}
            )
        return self._outcome(
            kind=kind,
            error=message,
            status=response.status,
            reason=response.reason or "",
            response_headers=dict(response.headers),
        )

    def response(self, response, body, truncated):
        status = response.status
        reason = response.reason or http.client.responses.get(status, "")
        headers = dict(response.headers)
        retry_after = None
        if status in (429, 503):
            retry_after = _parse_retry_after(
                headers.get("Retry-After"), self.sender.max_retry_after_seconds
            )

        if 200 <= status < 300:
            kind, error = "success", ""
        elif 300 <= status < 400:
            kind, error = "redirect", self._redirect_message(status, reason, headers)
        elif status == 410:
            kind = "gone"
            error = "the receiver answered 410 Gone: the URL no longer takes webhooks"
        elif status == 429:
            kind, error = "rate_limited", "the receiver answered 429 Too Many Requests"
        else:
            kind = "http_error"
            error = f"the receiver answered {status} {reason}".strip()
        if retry_after is not None:
            error += f" and asked to retry after {retry_after:g} s"

        return self._outcome(
            kind=kind,
            error=error,
            status=status,
            reason=reason,
            response_headers=headers,
            response_body=body.decode("utf-8", errors="replace"),
            retry_after_seconds=retry_after,
            response_truncated=truncated,
        )

    def _redirect_message(self, status, reason, headers):
        location = headers.get("Location")
        if not location:
            return (
                f"the receiver answered {status} {reason} without a Location; "
                "redirects are not followed"
            )
        absolute = mask_url(urljoin(self.prepared.target.url, location.strip()))
        if len(absolute) > MAX_URL_LENGTH:
            absolute = absolute[:MAX_URL_LENGTH] + "..."
        return f"redirected to {absolute}; redirects are not followed, so use the final URL"

    def _outcome(self, **fields):
        fields.setdefault("response_body", "")
        fields.setdefault("retry_after_seconds", None)
        kind = fields["kind"]
        return Outcome(
            succeeded=kind == "success",
            duration_ms=(time.monotonic() - self.started) * 1000,
            retryable=kind != "success" and kind not in PERMANENT_KINDS,
            request_url=self.prepared.masked_url,
            request_headers=self.prepared.recorded_headers,
            request_body=self.prepared.body.decode("utf-8", errors="replace"),
            remote_address=self.remote_address,
            **fields,
        )


def _host_header(target):
    host = f"[{target.host}]" if ":" in target.host else target.host.rstrip(".")
    if target.port != DEFAULT_PORTS[target.scheme]:
        host += f":{target.port}"
    return host


# Custom headers whose names contain one of these words usually carry
# credentials, so the delivery log shows their values masked.
SECRET_HEADER_WORDS = re.compile(
    r"auth|token|key|secret|password|passwd|session|cookie|credential|signature", re.IGNORECASE
)


def _mask_authorization(value):
    scheme, space, _ = value.partition(" ")
    return f"{scheme} ***" if space else "***"


BEFORE_RESPONSE = "before the response"
READING_BODY = "while reading the response body"


def _connection_lost(how):
    def describe(error, phase, total_timeout):
        if phase == READING_BODY:
            return f"connection {how} by the receiver after the response headers"
        return f"connection {how} by the receiver before it sent a response"

    return describe


def _certificate_failure(error, phase, total_timeout):
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None)
    return f"TLS certificate verify failed: {(reason or str(error)).rstrip('.')}"


# The first row whose exception type appears anywhere in the chain of causes
# describes the failure, so rows that name a cause come before rows that name a
# wrapper. RemoteDisconnected is a ConnectionResetError, so it comes first too.
_ERROR_DESCRIPTIONS = [
    (_ConnectFailed, None, lambda error, phase, total: str(error)),
    (_ResolutionFailed, "dns_error", lambda error, phase, total: str(error)),
    (AddressNotAllowed, "address_not_allowed", lambda error, phase, total: str(error)),
    (
        (ssl.SSLCertVerificationError, HostnameMismatch),
        "tls_error",
        _certificate_failure,
    ),
    (
        (TimeoutError, ReadTimeoutError),
        "timeout",
        lambda error, phase, total: f"timed out after {total:g} s {phase}",
    ),
    (
        ssl.SSLError,
        "tls_error",
        lambda error, phase, total: f"TLS handshake failed: {error.reason or error}",
    ),
    (http.client.RemoteDisconnected, "connection_error", _connection_lost("closed")),
    (ConnectionResetError, "connection_error", _connection_lost("reset")),
    (
        (http.client.IncompleteRead, Urllib3IncompleteRead),
        "connection_error",
        _connection_lost("closed"),
    ),
    (
        BrokenPipeError,
        "connection_error",
        lambda error, phase, total: "connection closed by the receiver while sending",
    ),
    (
        http.client.HTTPException,
        "invalid_response",
        lambda error, phase, total: f"the receiver sent an invalid response: {error}",
    ),
    (
        OSError,
        "connection_error",
        lambda error, phase, total: f"connection failed: {error.strerror or error}",
    ),
]


def _describe_error(error, phase, total_timeout):
    """Return (kind, plain-words message) for an exception raised during a send."""
    chain = _exception_chain(error)
    for types, kind, describe in _ERROR_DESCRIPTIONS:
        found = next((item for item in chain if isinstance(item, types)), None)
        if found is not None:
            return kind or found.kind, describe(found, phase, total_timeout)
    log.warning("Unexpected webhook error %r", error)
    return "connection_error", f"the request failed: {error}"


def _exception_chain(error):
    """Return the error, its causes, contexts and wrapped errors, outermost first."""
    chain = []
    pending = [error]
    while pending and len(chain) < 20:
        item = pending.pop(0)
        if item is None or any(item is seen for seen in chain):
            continue
        chain.append(item)
        pending.extend([item.__cause__, item.__context__])
        pending.extend(arg for arg in item.args if isinstance(arg, BaseException))
        reason = getattr(item, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
    return chain


def _parse_retry_after(value, cap):
    """Return the delay a Retry-After value requests, in seconds, at most `cap`."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, (when - datetime.now(UTC)).total_seconds())
    return min(seconds, float(cap))
