"""The webhook sender against real receivers on loopback.

Every test that sends uses servers it starts on 127.0.0.1 or ::1. Names such as
hooks.example.test are answered by an injected resolver and never reach DNS, and an
autouse guard makes any connection to a non-loopback address fail and be recorded,
so a refused address cannot cause outside traffic even if the policy broke.
"""

import base64
import ipaddress
import json
import socket
import threading
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from importlib.metadata import version

import pytest
import standardwebhooks

from pdauto import webhooks
from pdauto.webhooks import (
    FORM,
    AddressPolicy,
    InvalidURL,
    Sender,
    WebhookRequest,
    build_body,
    mask_url,
    normalize_url,
    sign,
    validate_custom_headers,
)
from tests.support.receivers import self_signed_context, tls_context

LOOPBACK = AddressPolicy.from_strings(["127.0.0.0/8", "::1/128"])
NO_EXCEPTIONS = AddressPolicy.from_strings([])
SECRET = "whsec_" + base64.b64encode(b"a" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()
PAYLOAD = {
    "trigger": "Deal won",
    "event_model": "deal",
    "event_action": "updated",
    "event_model_id": 42,
}
CONNECT_TIMEOUT = 1.0
TOTAL_TIMEOUT = 2.0


@pytest.fixture(autouse=True)
def outside_connections(monkeypatch):
    """Fail and record every connection the sender tries to a non-loopback address."""
    attempts = []
    real_connect = socket.socket.connect

    def connect_loopback_only(sock, address):
        ip = ipaddress.ip_address(address[0])
        # Only the IPv4-mapped form stays on this machine: NAT64 and 6to4 forms
        # of 127.0.0.1 are routed to a gateway.
        mapped = ip.ipv4_mapped if ip.version == 6 else None
        if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
            attempts.append(address)
            raise ConnectionRefusedError("the test guard blocks non-loopback addresses")
        return real_connect(sock, address)

    monkeypatch.setattr(webhooks._DeadlineSocket, "connect", connect_loopback_only)
    return attempts


@pytest.fixture
def make_sender():
    senders = []

    def make(policy=LOOPBACK, **options):
        options.setdefault("connect_timeout", CONNECT_TIMEOUT)
        options.setdefault("total_timeout", TOTAL_TIMEOUT)
        sender = Sender(policy, **options)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close()


@pytest.fixture
def sender(make_sender):
    return make_sender()


def webhook(url, **fields):
    fields.setdefault("payload", PAYLOAD)
    fields.setdefault("webhook_id", "msg_test_1")
    return WebhookRequest(url=url, **fields)


def resolver_for(mapping):
    """Return a resolver that answers names from `mapping` and fails for others."""
    calls = []

    def resolve(host, port):
        calls.append(host)
        answer = mapping.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if callable(answer):
            return answer()
        return answer

    resolve.calls = calls
    return resolve


# --- URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:25/x",
        "ftp://files.example.test/",
        "hooks.example.test/in",
        "javascript:alert(1)",
        "localhost:8080/in",
    ],
)
def test_normalize_rejects_scheme(url):
    with pytest.raises(InvalidURL) as error:
        normalize_url(url)

    assert "http://" in str(error.value)
    assert "https://" in str(error.value)


def test_bad_scheme_sends_nothing(sender, make_listener):
    listener = make_listener()

    outcome = sender.send(webhook(f"gopher://127.0.0.1:{listener.port}/x"))

    assert outcome.kind == "invalid_url"
    assert "http:// or https://" in outcome.error
    assert outcome.retryable is False
    assert listener.connection_count() == 0


@pytest.mark.parametrize(
    "raw",
    [
        " https://hooks.example.test/in ",
        "https://hooks.example.test/in\n",
        "\t https://hooks.example.test/in \r\n",
    ],
)
def test_normalize_trims_whitespace(raw):
    assert normalize_url(raw) == "https://hooks.example.test/in"


def test_trimmed_url_is_the_one_sent(sender, receiver):
    outcome = sender.send(webhook(f"  {receiver.url('/in')}\n"))

    assert outcome.succeeded
    assert outcome.request_url == receiver.url("/in")
    assert receiver.requests[0].path == "/in"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTPS://Hooks.Example.TEST/In?A=1", "https://hooks.example.test/In?A=1"),
        ("https://hooks.example.test", "https://hooks.example.test/"),
        ("https://hooks.example.test:443/x", "https://hooks.example.test/x"),
        ("http://hooks.example.test:80/x", "http://hooks.example.test/x"),
        ("http://hooks.example.test:8080/x#part", "http://hooks.example.test:8080/x"),
        ("http://hooks.example.test/a b", "http://hooks.example.test/a%20b"),
        ("http://bücher.example.test/", "http://xn--bcher-kva.example.test/"),
        ("http://2130706433/", "http://127.0.0.1/"),
        ("http://0x7f000001/", "http://127.0.0.1/"),
        ("http://0177.0.0.1/", "http://127.0.0.1/"),
        ("http://127.1/", "http://127.0.0.1/"),
        ("http://１２７.０.０.１/", "http://127.0.0.1/"),
        ("http://[0:0:0:0:0:0:0:1]:8080/", "http://[::1]:8080/"),
        (
            "http://user:p%40ss@hooks.example.test/",
            "http://user:p%40ss@hooks.example.test/",
        ),
        ("http://localhost./", "http://localhost./"),
    ],
)
def test_normalize_url_canonical_form(raw, expected):
    assert normalize_url(raw) == expected


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("", "Enter a URL"),
        ("http://", "no host name"),
        ("http:hooks.example.test", "no host name"),
        ("http://hooks.example.test:99999/", "not a number from 1 to 65535"),
        ("http://hooks.example.test:abc/", "not a number from 1 to 65535"),
        ("http://hooks..example.test/", "is not valid"),
        ("http://hooks.example.test%00/", "is not valid"),
        ("http://hooks.example.test\x00/", "control character"),
        ("http://hooks.example.test/\nHost: x", "control character"),
        ("http://[::1/", "cannot be read"),
        ("http://[fe80::1%25eth0]/", "not a valid IPv6 address"),
        ("http://::1/", "in brackets"),
        ("http://256.0.0.1/", "not a valid one"),
        ("http://evil.test\\@127.0.0.1/", "backslash"),
        ("http://%31%32%37.0.0.1/", "IPv4"),
        ("http://xn--a.test/", "is not valid"),
    ],
)
def test_normalize_url_rejects(raw, words):
    with pytest.raises(InvalidURL) as error:
        normalize_url(raw)

    assert words in str(error.value)


def test_long_url_is_form_error():
    url = "https://hooks.example.test/" + "a" * 4973

    with pytest.raises(InvalidURL) as error:
        normalize_url(url)

    assert len(url) == 5000
    assert "5,000 characters long" in str(error.value)


def test_long_url_send_is_outcome(sender):
    outcome = sender.send(webhook("https://hooks.example.test/" + "a" * 4973))

    assert outcome.kind == "invalid_url"
    assert "2,048" in outcome.error
    assert len(outcome.request_url) <= 2048


def test_unicode_host_sent_as_punycode(make_sender, receiver):
    resolver = resolver_for({"xn--bcher-kva.example.test": ["127.0.0.1"]})
    sender = make_sender(resolver=resolver)

    outcome = sender.send(webhook(f"http://bücher.example.test:{receiver.port}/in"))

    assert outcome.succeeded
    assert resolver.calls == ["xn--bcher-kva.example.test"]
    host = receiver.requests[0].headers["Host"]
    assert host == f"xn--bcher-kva.example.test:{receiver.port}"


def test_invalid_unicode_host_is_form_error(sender):
    outcome = sender.send(webhook("http://a\u200d.example.test/"))

    assert outcome.kind == "invalid_url"
    assert "internationalized domain name" in outcome.error


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "https://user:secret@hooks.example.test/p",
            "https://user:***@hooks.example.test/p",
        ),
        ("https://token@hooks.example.test/p", "https://***@hooks.example.test/p"),
        ("https://hooks.example.test/p?a=b@c", "https://hooks.example.test/p?a=b@c"),
        ("https://a:b@c@hooks.example.test/", "https://a:***@hooks.example.test/"),
        ("user:secret@hooks.example.test", "user:***@hooks.example.test"),
        ("https://hooks.example.test/", "https://hooks.example.test/"),
        ("", ""),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


# --- Address policy, end to end ----------------------------------------------------

LOOPBACK_SPELLINGS = [
    "http://127.0.0.1:{port}/",
    "http://127.0.0.2:{port}/",
    "http://localhost:{port}/",
    "http://localhost.:{port}/",
    "http://LOCALHOST:{port}/",
    "http://hooks.localhost:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f000001:{port}/",
    "http://0177.0.0.1:{port}/",
    "http://0x7f.1:{port}/",
    "http://127.1:{port}/",
    "http://127.0.1:{port}/",
    "http://127.0.0.1.:{port}/",
    "http://１２７.０.０.１:{port}/",
    "http://①②⑦.0.0.1:{port}/",
    "http://ｌｏｃａｌｈｏｓｔ:{port}/",
    "http://0.0.0.0:{port}/",
    "http://0:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/",
    "http://[64:ff9b::127.0.0.1]:{port}/",
    "http://user:pass@127.0.0.1:{port}/",
]


@pytest.mark.parametrize("template", LOOPBACK_SPELLINGS)
def test_loopback_refused_by_default(make_sender, make_listener, template):
    listener = make_listener()
    sender = make_sender(NO_EXCEPTIONS)

    outcome = sender.send(webhook(template.format(port=listener.port)))

    assert outcome.kind == "address_not_allowed"
    assert outcome.error.startswith("address not allowed: ")
    assert "PDAUTO_ALLOWED_NETWORKS" in outcome.error
    assert outcome.retryable is False
    assert listener.connection_count() == 0


@pytest.mark.parametrize(
    "template",
    ["http://[::1]:{port}/", "http://[::]:{port}/", "http://localhost:{port}/"],
)
def test_ipv6_loopback_refused_by_default(make_sender, make_listener, template):
    listener = make_listener("::1")
    sender = make_sender(NO_EXCEPTIONS)

    outcome = sender.send(webhook(template.format(port=listener.port)))

    assert outcome.kind == "address_not_allowed"
    assert listener.connection_count() == 0


def test_redis_port_refused(make_sender):
    sender = make_sender(NO_EXCEPTIONS)

    outcome = sender.send(webhook("http://127.0.0.1:6379/"))

    assert outcome.kind == "address_not_allowed"
    assert outcome.error.startswith("address not allowed: 127.0.0.1 is a loopback address.")


OUTSIDE_ADDRESSES = [
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://2852039166/latest/meta-data/", "metadata"),
    ("http://0xa9fea9fe/", "metadata"),
    ("http://[::ffff:169.254.169.254]/", "metadata"),
    ("http://[::ffff:a9fe:a9fe]/", "metadata"),
    ("http://[64:ff9b::a9fe:a9fe]/", "metadata"),
    ("http://10.0.0.5/", "private"),
    ("http://012.0.0.5/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.0.1/", "private"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://224.0.0.1/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://[fd00::1]/", "unique-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[2002:a00:5::1]/", "private"),
]


@pytest.mark.parametrize(("url", "words"), OUTSIDE_ADDRESSES)
@pytest.mark.parametrize("policy", [NO_EXCEPTIONS, LOOPBACK], ids=["empty", "loopback"])
def test_internal_address_refused(make_sender, outside_connections, url, words, policy):
    sender = make_sender(policy)

    outcome = sender.send(webhook(url))

    assert outcome.kind == "address_not_allowed"
    assert words in outcome.error
    assert outside_connections == []


def test_name_resolving_to_loopback_refused(make_sender, make_listener):
    listener = make_listener()
    resolver = resolver_for({"hooks.example.test": ["127.0.0.1"]})
    sender = make_sender(NO_EXCEPTIONS, resolver=resolver)

    outcome = sender.send(webhook(f"http://hooks.example.test:{listener.port}/in"))

    assert outcome.kind == "address_not_allowed"
    assert "hooks.example.test resolves to 127.0.0.1" in outcome.error
    assert listener.connection_count() == 0


def test_name_with_any_internal_answer_refused(make_sender, receiver, outside_connections):
    resolver = resolver_for({"hooks.example.test": ["127.0.0.1", "10.0.0.5"]})
    sender = make_sender(resolver=resolver)

    outcome = sender.send(webhook(f"http://hooks.example.test:{receiver.port}/in"))

    assert outcome.kind == "address_not_allowed"
    assert "10.0.0.5" in outcome.error
    assert receiver.requests == []
    assert outside_connections == []


def test_dns_rebinding_cannot_redirect(make_sender, receiver, outside_connections):
    answers = iter([["127.0.0.1"], ["10.0.0.5"], ["10.0.0.5"]])
    resolver = resolver_for({"hooks.example.test": lambda: next(answers)})
    sender = make_sender(resolver=resolver)
    url = f"http://hooks.example.test:{receiver.port}/in"

    first = sender.send(webhook(url))
    sender.close()  # the next send needs a new connection, so a new lookup
    second = sender.send(webhook(url))

    assert first.succeeded
    assert first.remote_address == f"127.0.0.1:{receiver.port}"
    assert second.kind == "address_not_allowed"
    assert resolver.calls == ["hooks.example.test", "hooks.example.test"]
    assert len(receiver.requests) == 1
    assert outside_connections == []


def test_connection_uses_checked_address(make_sender, receiver):
    resolver = resolver_for({"hooks.example.test": ["127.0.0.1"]})
    sender = make_sender(resolver=resolver)

    outcome = sender.send(webhook(f"http://hooks.example.test:{receiver.port}/in"))

    assert outcome.succeeded
    assert resolver.calls == ["hooks.example.test"]
    assert receiver.requests[0].headers["Host"] == f"hooks.example.test:{receiver.port}"


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/in",
        "http://localhost:{port}/in",
        "http://2130706433:{port}/in",
        "http://127.1:{port}/in",
        "http://[::ffff:127.0.0.1]:{port}/in",
    ],
)
def test_allowed_networks_reach_loopback(sender, receiver, template):
    outcome = sender.send(webhook(template.format(port=receiver.port)))

    assert outcome.succeeded
    assert len(receiver.requests) == 1


def test_ipv6_loopback_allowed(sender, make_receiver):
    receiver = make_receiver("::1")

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.succeeded
    assert receiver.requests[0].headers["Host"] == f"[::1]:{receiver.port}"


def test_dns_failure_is_outcome(make_sender):
    sender = make_sender(resolver=resolver_for({}))

    outcome = sender.send(webhook("http://nowhere.example.test/in"))

    assert outcome.kind == "dns_error"
    assert outcome.error.startswith("could not resolve nowhere.example.test")
    assert outcome.retryable is True


def test_resolver_garbage_is_outcome(make_sender):
    sender = make_sender(resolver=resolver_for({"hooks.example.test": ["not-an-ip"]}))

    outcome = sender.send(webhook("http://hooks.example.test/in"))

    assert outcome.kind == "dns_error"
    assert "not an IP address" in outcome.error


# --- Request contents --------------------------------------------------------------


def test_json_body_compact_in_order(sender, receiver):
    payload = {"trigger": "Deal won", "event_model": "deal", "b": 1, "a": "é"}

    outcome = sender.send(webhook(receiver.url("/in"), payload=payload))

    request = receiver.requests[0]
    assert request.method == "POST"
    assert request.body == '{"trigger":"Deal won","event_model":"deal","b":1,"a":"é"}'.encode()
    assert request.headers["Content-Type"] == "application/json"
    assert outcome.request_body == request.body.decode()


def test_form_body_fields(sender, receiver):
    payload = {
        **PAYLOAD,
        "test": True,
        "note": None,
        "changes": {"status": ["open", "won"]},
    }

    sender.send(webhook(receiver.url("/in"), payload=payload, content_type=FORM))

    request = receiver.requests[0]
    assert request.headers["Content-Type"] == FORM
    assert request.form() == {
        "trigger": "Deal won",
        "event_model": "deal",
        "event_action": "updated",
        "event_model_id": "42",
        "test": "true",
        "note": "",
        "changes": '{"status":["open","won"]}',
    }


def test_headers_sent(sender, receiver):
    before = int(time.time())

    outcome = sender.send(webhook(receiver.url("/in"), custom_headers=(("X-Team", "sales"),)))

    headers = receiver.requests[0].headers
    assert headers["User-Agent"] == f"pdauto/{version('pdauto')}"
    assert headers["webhook-id"] == "msg_test_1"
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())
    assert headers["X-Team"] == "sales"
    assert "webhook-signature" not in headers
    assert outcome.request_headers["X-Team"] == "sales"
    assert outcome.request_headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert outcome.request_headers["Content-Length"] == headers["Content-Length"]


def test_signature_verifies(sender, receiver):
    sender.send(webhook(receiver.url("/in"), secrets=(SECRET,)))

    request = receiver.requests[0]
    verified = standardwebhooks.Webhook(SECRET).verify(request.body, dict(request.headers))
    assert verified == PAYLOAD


def test_rotation_sends_both_signatures(sender, receiver):
    sender.send(webhook(receiver.url("/in"), secrets=(SECRET, OLD_SECRET)))

    request = receiver.requests[0]
    headers = dict(request.headers)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert standardwebhooks.Webhook(SECRET).verify(request.body, headers) == PAYLOAD
    assert standardwebhooks.Webhook(OLD_SECRET).verify(request.body, headers) == PAYLOAD


def test_after_rotation_old_secret_fails(sender, receiver):
    sender.send(webhook(receiver.url("/in"), secrets=(SECRET,)))

    request = receiver.requests[0]
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(OLD_SECRET).verify(request.body, dict(request.headers))


def test_signature_of_form_body_verifies(sender, receiver):
    sender.send(webhook(receiver.url("/in"), secrets=(SECRET,), content_type=FORM))

    request = receiver.requests[0]
    webhook_verifier = standardwebhooks.Webhook(SECRET)
    assert webhook_verifier.verify(request.body, dict(request.headers), json_parse=False) is None


def test_sign_matches_library():
    body = b'{"a":1}'
    when = datetime.fromtimestamp(1_700_000_000, UTC)

    expected = standardwebhooks.Webhook(SECRET).sign("msg_1", when, body)

    assert sign(SECRET, "msg_1", 1_700_000_000, body) == expected


def test_sign_accepts_unpadded_secret():
    unpadded = "whsec_" + base64.b64encode(b"c" * 31).decode().rstrip("=")
    body = b"{}"
    when = datetime.fromtimestamp(1_700_000_000, UTC)

    expected = standardwebhooks.Webhook(unpadded).sign("msg_1", when, body)

    assert sign(unpadded, "msg_1", 1_700_000_000, body) == expected


@pytest.mark.parametrize("secret", ["plain", "whsec_", "whsec_!!!", None])
def test_sign_rejects_bad_secret(secret):
    with pytest.raises(ValueError):
        sign(secret, "msg_1", 1, b"{}")


def test_given_timestamp_is_signed(sender, receiver):
    sender.send(webhook(receiver.url("/in"), secrets=(SECRET,), timestamp=1_700_000_000))

    request = receiver.requests[0]
    assert request.headers["webhook-timestamp"] == "1700000000"
    expected = sign(SECRET, "msg_test_1", 1_700_000_000, request.body)
    assert request.headers["webhook-signature"] == expected


def test_url_credentials_become_basic_auth(sender, receiver):
    url = f"http://hook%20user:p%40ss:word@127.0.0.1:{receiver.port}/in"

    outcome = sender.send(webhook(url))

    request = receiver.requests[0]
    expected = base64.b64encode(b"hook user:p@ss:word").decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert request.path == "/in"
    assert outcome.request_url == f"http://hook%20user:***@127.0.0.1:{receiver.port}/in"
    assert outcome.request_headers["Authorization"] == "Basic ***"
    assert "p@ss" not in repr(outcome)
    assert "p%40ss" not in repr(outcome)


def test_custom_authorization_masked(sender, receiver):
    headers = (("Authorization", "Bearer token-123"),)

    outcome = sender.send(webhook(receiver.url("/in"), custom_headers=headers))

    assert receiver.requests[0].headers["Authorization"] == "Bearer token-123"
    assert outcome.request_headers["Authorization"] == "Bearer ***"


def test_credentials_and_authorization_conflict(sender, receiver):
    url = f"http://user:pw@127.0.0.1:{receiver.port}/in"

    outcome = sender.send(webhook(url, custom_headers=(("Authorization", "Bearer x"),)))

    assert outcome.kind == "invalid_request"
    assert receiver.requests == []


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "content-length",
        "Content-Type",
        "User-Agent",
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "webhook-id",
        "Webhook-Signature",
        "Expect",
    ],
)
def test_custom_header_name_refused(name):
    with pytest.raises(ValueError) as error:
        validate_custom_headers([(name, "x")])

    assert name in str(error.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Bad Name", "x"),
        ("X-Bad:Name", "x"),
        ("X-Line\r\nInjected", "x"),
        ("", "x"),
        ("X-Value", "a\r\nInjected: yes"),
        ("X-Value", "a\nb"),
        ("X-Value", "caf\u00e9"),
        ("X-Value", "a\x00b"),
    ],
)
def test_custom_header_rejects_characters(name, value):
    with pytest.raises(ValueError):
        validate_custom_headers([(name, value)])


def test_custom_header_duplicate_refused():
    with pytest.raises(ValueError) as error:
        validate_custom_headers([("X-Team", "a"), ("x-team", "b")])

    assert "x-team" in str(error.value)


def test_custom_headers_stripped():
    headers = validate_custom_headers({" X-Team ": " sales ", "Authorization": "Bearer t"})

    assert headers == [("X-Team", "sales"), ("Authorization", "Bearer t")]


def test_invalid_header_is_outcome(sender, receiver):
    outcome = sender.send(webhook(receiver.url("/in"), custom_headers=(("Host", "x"),)))

    assert outcome.kind == "invalid_request"
    assert "Host" in outcome.error
    assert receiver.requests == []


@pytest.mark.parametrize(
    "fields",
    [
        {"payload": ["not", "a", "mapping"]},
        {"payload": {"value": float("nan")}},
        {"payload": {"when": datetime.now(UTC)}},
        {"content_type": "text/plain"},
        {"secrets": ("not-a-secret",)},
        {"webhook_id": "has space"},
        {"webhook_id": ""},
    ],
)
def test_bad_request_is_outcome(sender, receiver, fields):
    outcome = sender.send(webhook(receiver.url("/in"), **fields))

    assert outcome.kind == "invalid_request"
    assert outcome.error
    assert outcome.retryable is False
    assert receiver.requests == []


def test_build_body_rejects_unknown_type():
    with pytest.raises(ValueError) as error:
        build_body(webhook("http://hooks.example.test/", content_type="text/xml"))

    assert "text/xml" in str(error.value)


# --- Responses -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_success(sender, receiver, status):
    receiver.respond("/in", status=status, body=b"")

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.succeeded is True
    assert outcome.kind == "success"
    assert outcome.error == ""
    assert outcome.status == status
    assert outcome.retryable is False
    assert outcome.response_body == ""


def test_response_details_recorded(sender, receiver):
    receiver.respond("/in", status=200, body="thanks", headers={"X-Request-Id": "r1"})

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.reason == "OK"
    assert outcome.response_body == "thanks"
    assert outcome.response_headers["X-Request-Id"] == "r1"
    assert outcome.response_truncated is False
    assert 0 < outcome.duration_ms < 2000


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_not_followed(sender, receiver, status):
    receiver.respond("/old", status=status, headers={"Location": "/new"})

    outcome = sender.send(webhook(receiver.url("/old")))

    assert outcome.succeeded is False
    assert outcome.kind == "redirect"
    assert outcome.error.startswith(
        f"redirected to {receiver.url('/new')}; redirects are not followed"
    )
    assert outcome.retryable is True
    assert [request.path for request in receiver.requests] == ["/old"]


def test_redirect_location_masked(sender, receiver):
    receiver.respond("/old", status=302, headers={"Location": "https://u:pw@x.test/y"})

    outcome = sender.send(webhook(receiver.url("/old")))

    assert outcome.error.startswith("redirected to https://u:***@x.test/y;")


def test_redirect_without_location(sender, receiver):
    receiver.respond("/old", status=300, body=b"")

    outcome = sender.send(webhook(receiver.url("/old")))

    assert outcome.kind == "redirect"
    assert "without a Location" in outcome.error


def test_gone_is_permanent(sender, receiver):
    receiver.respond("/in", status=410, body=b"endpoint deleted")

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.kind == "gone"
    assert "410 Gone" in outcome.error
    assert outcome.retryable is False
    assert outcome.response_body == "endpoint deleted"


def test_server_error_is_retryable(sender, receiver):
    receiver.respond("/in", status=500, body=b"boom")

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.kind == "http_error"
    assert outcome.error == "the receiver answered 500 Internal Server Error"
    assert outcome.retryable is True
    assert outcome.retry_after_seconds is None


def test_rate_limit_retry_after_seconds(sender, receiver):
    receiver.respond("/in", status=429, headers={"Retry-After": "120"})

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.kind == "rate_limited"
    assert outcome.retry_after_seconds == 120
    assert outcome.retryable is True


def test_unavailable_retry_after_date(sender, receiver):
    when = datetime.now(UTC) + timedelta(seconds=90)
    receiver.respond("/in", status=503, headers={"Retry-After": format_datetime(when, usegmt=True)})

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.kind == "http_error"
    assert 80 <= outcome.retry_after_seconds <= 90


def test_retry_after_capped(make_sender, receiver):
    sender = make_sender(max_retry_after_seconds=600)
    receiver.respond("/in", status=429, headers={"Retry-After": "999999"})

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.retry_after_seconds == 600


@pytest.mark.parametrize("value", ["soon", "-5", "1.5e3"])
def test_retry_after_invalid_ignored(sender, receiver, value):
    receiver.respond("/in", status=429, headers={"Retry-After": value})

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.retry_after_seconds is None


def test_retry_after_ignored_on_success(sender, receiver):
    receiver.respond("/in", status=200, headers={"Retry-After": "30"})

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.retry_after_seconds is None


def test_invalid_utf8_body_replaced(sender, receiver):
    receiver.respond("/in", status=200, body=b"ok \xff\xfe")

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.response_body == "ok \ufffd\ufffd"


def test_large_body_cut_at_limit(sender, receiver):
    receiver.respond("/big", status=500, body=b"x" * 100_000)

    big = sender.send(webhook(receiver.url("/big")))
    after = sender.send(webhook(receiver.url("/in")))

    assert len(big.response_body) == 65536
    assert big.response_truncated is True
    assert after.succeeded
    assert after.response_body == "ok"


def stream_forever(exchange):
    exchange.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    chunk = b"y" * 16384
    exchange.sent = 0
    for _ in range(100_000):  # bounded: about 1.6 GB, far beyond any client limit
        if not exchange.write(chunk):
            return
        exchange.sent += len(chunk)


def test_endless_body_reads_64_kib(sender, receiver):
    exchanges = []

    def stream(exchange):
        exchanges.append(exchange)
        stream_forever(exchange)

    receiver.respond_with("/endless", stream)
    tracemalloc.start()
    try:
        outcome = sender.send(webhook(receiver.url("/endless")))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert outcome.succeeded
    assert outcome.response_truncated is True
    assert len(outcome.response_body) == 65536
    assert peak < 2 * 1024 * 1024
    assert outcome.duration_ms < 2000


# --- Time limits and broken connections ------------------------------------------------


def trickle(head, body=b"", interval=0.1):
    """Return a respond_with function that sends `head` whole, then `body` slowly."""

    def respond(exchange):
        if head and not exchange.write(head):
            return
        for byte in body:
            if exchange.wait(interval) or not exchange.write(bytes([byte])):
                return

    return respond


def test_trickled_headers_cut_at_deadline(make_sender, receiver):
    sender = make_sender(total_timeout=1.0)
    headers = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"z" * 500 + b"\r\n\r\n"
    receiver.respond_with("/slow", trickle(b"", headers))

    started = time.monotonic()
    outcome = sender.send(webhook(receiver.url("/slow")))
    elapsed = time.monotonic() - started

    assert outcome.kind == "timeout"
    assert outcome.error == "timed out after 1 s before the response"
    assert outcome.retryable is True
    assert 0.9 <= elapsed < 1.6


def test_trickled_body_cut_at_deadline(make_sender, receiver):
    sender = make_sender(total_timeout=1.0)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"
    receiver.respond_with("/slow", trickle(head, b"z" * 500))

    started = time.monotonic()
    outcome = sender.send(webhook(receiver.url("/slow")))
    elapsed = time.monotonic() - started

    assert outcome.succeeded is False
    assert outcome.kind == "timeout"
    assert outcome.error == "timed out after 1 s while reading the response body"
    assert outcome.status == 200
    assert 0.9 <= elapsed < 1.6


def test_slow_answer_times_out(make_sender, receiver):
    sender = make_sender(total_timeout=0.5)
    receiver.respond("/in", delay=3)

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.kind == "timeout"
    assert outcome.duration_ms < 1200


def test_deadline_covers_tls_handshake(make_sender, make_listener):
    listener = make_listener()  # accepts TCP but never answers the TLS hello
    sender = make_sender(total_timeout=0.5)

    started = time.monotonic()
    outcome = sender.send(webhook(f"https://127.0.0.1:{listener.port}/in"))

    assert outcome.kind == "timeout"
    assert time.monotonic() - started < 1.2


def test_full_backlog_times_out_connecting(make_sender, full_backlog_address):
    host, port = full_backlog_address
    sender = make_sender(connect_timeout=0.5, total_timeout=2.0)

    started = time.monotonic()
    outcome = sender.send(webhook(f"http://{host}:{port}/in"))
    elapsed = time.monotonic() - started

    assert outcome.kind == "connect_timeout"
    assert outcome.error == f"timed out connecting to {host}:{port} after 0.5 s"
    assert outcome.retryable is True
    assert 0.45 <= elapsed < 1.0


def test_refused_connection(sender, make_listener):
    listener = make_listener()
    port = listener.port
    listener.close()  # nothing listens on the port any more

    outcome = sender.send(webhook(f"http://127.0.0.1:{port}/in"))

    assert outcome.kind == "connection_refused"
    assert outcome.error == f"connection refused by 127.0.0.1:{port}"
    assert outcome.retryable is True


def close_after_headers(exchange):
    exchange.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")


def reset_after_headers(exchange):
    exchange.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    exchange.reset()


def close_at_once(exchange):
    pass


def reset_at_once(exchange):
    exchange.reset()


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (
            close_after_headers,
            "connection closed by the receiver after the response headers",
        ),
        (
            reset_after_headers,
            "connection reset by the receiver after the response headers",
        ),
        (close_at_once, "connection closed by the receiver before it sent a response"),
        (reset_at_once, "connection reset by the receiver before it sent a response"),
    ],
)
def test_broken_connection(sender, receiver, function, message):
    receiver.respond_with("/broken", function)

    outcome = sender.send(webhook(receiver.url("/broken")))

    assert outcome.succeeded is False
    assert outcome.kind == "connection_error"
    assert outcome.error == message
    assert outcome.retryable is True


def test_garbage_response(sender, receiver):
    receiver.respond_with("/garbage", lambda exchange: exchange.write(b"SMTP ready\r\n"))

    outcome = sender.send(webhook(receiver.url("/garbage")))

    assert outcome.kind == "invalid_response"
    assert outcome.retryable is True


# --- TLS ---------------------------------------------------------------------------------


def test_tls_with_trusted_ca(make_sender, tls_receiver):
    sender = make_sender(verify=tls_receiver.ca_path)

    outcome = sender.send(webhook(tls_receiver.url("/in")))

    assert outcome.succeeded
    assert tls_receiver.requests[0].body == build_body(webhook(""))


def test_tls_checks_name_not_address(make_sender, make_receiver, test_ca, test_ca_path):
    server_names = []
    context = tls_context(test_ca, "hooks.example.test")
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    receiver = make_receiver(ssl_context=context)
    resolver = resolver_for({"hooks.example.test": ["127.0.0.1"]})
    sender = make_sender(verify=test_ca_path, resolver=resolver)

    outcome = sender.send(webhook(f"https://hooks.example.test:{receiver.port}/in"))

    assert outcome.succeeded
    assert server_names == ["hooks.example.test"]
    assert receiver.requests[0].headers["Host"] == f"hooks.example.test:{receiver.port}"


def test_tls_self_signed(make_sender, make_receiver, tmp_path):
    receiver = make_receiver(ssl_context=self_signed_context(tmp_path, "localhost"))
    sender = make_sender()

    outcome = sender.send(webhook(f"https://localhost:{receiver.port}/in"))

    assert outcome.kind == "tls_error"
    assert outcome.error == "TLS certificate verify failed: self-signed certificate"
    assert receiver.requests == []


def test_tls_unknown_ca(make_sender, tls_receiver):
    sender = make_sender()  # the system CAs do not include the test CA

    outcome = sender.send(webhook(tls_receiver.url("/in")))

    assert outcome.kind == "tls_error"
    assert outcome.error.startswith("TLS certificate verify failed: unable to get")


def test_tls_host_mismatch(make_sender, make_receiver, test_ca, test_ca_path):
    receiver = make_receiver(ssl_context=tls_context(test_ca, "other.example.test"))
    resolver = resolver_for({"hooks.example.test": ["127.0.0.1"]})
    sender = make_sender(verify=test_ca_path, resolver=resolver)

    outcome = sender.send(webhook(f"https://hooks.example.test:{receiver.port}/in"))

    assert outcome.kind == "tls_error"
    assert outcome.error.startswith("TLS certificate verify failed: Hostname mismatch")
    assert "hooks.example.test" in outcome.error
    assert receiver.requests == []


def test_tls_to_plain_server(sender, receiver):
    outcome = sender.send(webhook(f"https://127.0.0.1:{receiver.port}/in"))

    assert outcome.kind == "tls_error"
    assert outcome.error.startswith("TLS handshake failed")


def test_verify_cannot_be_disabled():
    with pytest.raises(ValueError):
        Sender(LOOPBACK, connect_timeout=1, total_timeout=2, verify=False)


# --- Connections and threads -----------------------------------------------------------


def test_connection_reused(sender, receiver):
    outcomes = [sender.send(webhook(receiver.url("/in"))) for _ in range(5)]

    assert all(outcome.succeeded for outcome in outcomes)
    assert receiver.connection_count == 1


def test_send_after_close(sender, receiver):
    sender.send(webhook(receiver.url("/in")))
    sender.close()

    outcome = sender.send(webhook(receiver.url("/in")))

    assert outcome.succeeded
    assert receiver.connection_count == 2


def test_server_closing_idle_connection(sender, receiver):
    receiver.respond("/close", headers={"Connection": "close"})

    first = sender.send(webhook(receiver.url("/close")))
    second = sender.send(webhook(receiver.url("/close")))

    assert first.succeeded
    assert second.succeeded


def test_threads_share_sender(sender, receiver):
    results = []

    def send_many():
        for _ in range(25):
            results.append(sender.send(webhook(receiver.url("/in"))))

    threads = [threading.Thread(target=send_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(results) == 100
    assert all(outcome.succeeded for outcome in results)
    assert len(receiver.requests) == 100


def test_deadline_is_per_thread(make_sender, receiver):
    sender = make_sender(total_timeout=1.0)
    receiver.respond("/slow", delay=0.6)
    results = {}

    def send(name, path):
        results[name] = sender.send(webhook(receiver.url(path)))

    slow = threading.Thread(target=send, args=("slow", "/slow"))
    slow.start()
    time.sleep(0.2)
    send("fast", "/in")
    slow.join(5)

    assert results["slow"].succeeded
    assert results["fast"].succeeded


def test_outcome_json_serialisable(sender, receiver):
    outcome = sender.send(webhook(receiver.url("/in")))

    assert json.loads(json.dumps(vars(outcome)))["kind"] == "success"
