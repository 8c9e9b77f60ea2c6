"""URLs typed into the builder, through Test Now and Save: schemes, whitespace,
internal addresses in every spelling, very long and non-ASCII URLs.

Receivers and listeners run on 127.0.0.1 and ::1. Host names resolve only to the
addresses a test puts in `outbound.names`, and connections to any non-loopback
address are rejected and recorded, so no test can reach another host.
"""

import re

import idna
import pytest

from pdauto.extensions import db
from pdauto.models import Action
from tests.test_save_proof import automation_count, proof_for
from tests.test_test_now import builder_fields, guard_outbound, post_test_now

POLICY_WORDS = (
    "Webhooks go only to public internet addresses unless PDAUTO_ALLOWED_NETWORKS "
    "lists the network."
)
NO_ALLOWED_NETWORKS = pytest.mark.parametrize(
    "app_overrides", [{"PDAUTO_ALLOWED_NETWORKS": []}], ids=["no-allowed-networks"]
)


@pytest.fixture(autouse=True)
def outbound(monkeypatch):
    return guard_outbound(monkeypatch)


def save(client, url, proof="", **overrides):
    data = builder_fields(url, test_proof=proof, content_type="application/json", **overrides)
    return client.post("/automations/new", data=data)


def field_errors(html):
    return [
        " ".join(re.sub(r"<[^>]+>", "", error).split())
        for error in re.findall(r'<p class="field-error"[^>]*>(.*?)</p>', html, re.S)
    ]


def stored_urls(app):
    with app.app_context():
        return db.session.scalars(db.select(Action.url)).all()


# --- Schemes ----------------------------------------------------------------------

BAD_SCHEMES = [
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/x",
    "ftp://files.example.test/",
    "ftp://127.0.0.1:{port}/",
    "hooks.example.test/in",
    "127.0.0.1:{port}/in",
    "//127.0.0.1:{port}/in",
    "ws://127.0.0.1:{port}/",
    "javascript:alert(1)",
    "data:text/plain,hello",
]


def test_bad_scheme_test_now(manager_client, make_listener, outbound, subtests):
    listener = make_listener()
    for template in BAD_SCHEMES:
        url = template.format(port=listener.port)
        with subtests.test(url=url):
            result = post_test_now(manager_client, url)

            assert not result.succeeded
            assert "http://" in result.text
            assert "https://" in result.text
            assert "schemes allowed" in result.text
            assert result.proof == ""

    assert listener.connection_count() == 0
    assert outbound.lookups == []
    assert outbound.connections == []


def test_bad_scheme_save(app, users, manager_client, make_listener, outbound, subtests):
    listener = make_listener()
    for template in BAD_SCHEMES:
        url = template.format(port=listener.port)
        with subtests.test(url=url):
            proof = proof_for(app, users["manager"][2], url=url)

            response = save(manager_client, url, proof)

            assert response.status_code == 422
            errors = field_errors(response.text)
            assert len(errors) == 1
            assert "http://" in errors[0]
            assert "https://" in errors[0]

    assert automation_count(app) == 0
    assert listener.connection_count() == 0
    assert outbound.connections == []


# --- Whitespace ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrapping",
    ["  {url}  ", "{url}\n", "{url}\r\n", "\t{url}\n", " \n{url} \n "],
    ids=["spaces", "newline", "crlf", "tab-newline", "mixed"],
)
def test_trimmed_url_tested_and_saved(
    app, monkeypatch, manager_client, tls_receiver, test_ca_path, outbound, wrapping
):
    # The view's Sender trusts the system CAs, which OpenSSL reads from SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", test_ca_path)
    outbound.names["hooks.example.test"] = ["127.0.0.1"]
    canonical = f"https://hooks.example.test:{tls_receiver.port}/in"
    typed = wrapping.format(url=canonical)

    result = post_test_now(manager_client, typed)
    response = save(manager_client, typed, result.proof)

    assert result.succeeded, result.text
    assert result.tested_url == typed
    assert result.request_url == canonical
    assert response.status_code == 302, field_errors(response.text)
    assert stored_urls(app) == [result.request_url]
    (request,) = tls_receiver.wait_for_requests(1)
    assert request.path == "/in"
    assert request.headers["Host"] == f"hooks.example.test:{tls_receiver.port}"


def test_save_rejects_proof_of_other_url(app, manager_client, receiver):
    result = post_test_now(manager_client, receiver.url("/in"))

    response = save(manager_client, receiver.url("/other"), result.proof)

    assert result.succeeded
    assert response.status_code == 422
    assert automation_count(app) == 0


def test_line_break_inside_url_rejected(app, users, manager_client, receiver):
    url = receiver.url("/in") + "\r\nX-Injected: yes"
    proof = proof_for(app, users["manager"][2], url=url)

    result = post_test_now(manager_client, url)
    response = save(manager_client, url, proof)

    assert "line break or another control character" in result.text
    assert response.status_code == 422
    assert "line break" in field_errors(response.text)[0]
    assert receiver.requests == []


# --- Internal addresses, with no allowed networks --------------------------------------

# (URL template, the receiver that the URL reaches when loopback is allowed: "v4" on
# 127.0.0.1, "v6" on ::1, or None for neither.)
LOOPBACK_SPELLINGS = [
    ("http://127.0.0.1:{v4}/", "v4"),
    ("http://localhost:{v4}/", "v4"),
    ("http://LOCALHOST:{v4}/", "v4"),
    ("http://localhost.:{v4}/", "v4"),
    ("http://api.localhost:{v4}/", "v4"),
    ("http://ｌｏｃａｌｈｏｓｔ:{v4}/", "v4"),
    ("http://127.1:{v4}/", "v4"),
    ("http://127.0.1:{v4}/", "v4"),
    ("http://127.0.0.1.:{v4}/", "v4"),
    ("http://127.000.000.001:{v4}/", "v4"),
    ("http://2130706433:{v4}/", "v4"),
    ("http://0x7f000001:{v4}/", "v4"),
    ("http://0X7F000001:{v4}/", "v4"),
    ("http://0x7f.0.0.1:{v4}/", "v4"),
    ("http://0x7f.1:{v4}/", "v4"),
    ("http://0177.0.0.1:{v4}/", "v4"),
    ("http://0177.1:{v4}/", "v4"),
    ("http://017700000001:{v4}/", "v4"),
    ("http://１２７.０.０.１:{v4}/", "v4"),
    ("http://127。0。0。1:{v4}/", "v4"),
    ("http://user:secret@127.0.0.1:{v4}/", "v4"),
    ("http://hooks.example.test@127.0.0.1:{v4}/", "v4"),
    ("http://[::ffff:127.0.0.1]:{v4}/", "v4"),
    ("http://[::FFFF:7f00:1]:{v4}/", "v4"),
    ("http://[0:0:0:0:0:ffff:127.0.0.1]:{v4}/", "v4"),
    ("http://127.0.0.2:{v4}/", None),
    ("http://127.255.255.254:{v4}/", None),
    ("http://[::1]:{v6}/", "v6"),
    ("http://[0:0:0:0:0:0:0:1]:{v6}/", "v6"),
    ("http://[0000::0001]:{v6}/", "v6"),
    ("http://localhost:{v6}/", "v6"),
]

# Addresses that an allowed loopback network does not cover: the unspecified
# address, which Linux connects to this machine, and the NAT64 and 6to4 forms of
# 127.0.0.1, which are routed to a gateway.
UNSPECIFIED_SPELLINGS = [
    "http://0.0.0.0:{v4}/",
    "http://0:{v4}/",
    "http://0.0.0.0.:{v4}/",
    "http://[::]:{v6}/",
    "http://[::0]:{v6}/",
    "http://[::127.0.0.1]:{v4}/",
    "http://zero.example.test:{v4}/",
]
GATEWAY_SPELLINGS = ["http://[64:ff9b::127.0.0.1]:{v4}/", "http://[2002:7f00:1::]:{v4}/"]

# Names answered by the injected resolver.
RESOLVED_NAMES = {
    "hooks.example.test": ["127.0.0.1"],
    "hooks.example.test.": ["127.0.0.1"],
    "127.0.0.1.nip.example.test": ["127.0.0.1"],
    "mapped.example.test": ["::ffff:127.0.0.1"],
    "v6.example.test": ["::1"],
    "zero.example.test": ["0.0.0.0"],
}
NAME_SPELLINGS = [
    ("http://hooks.example.test:{v4}/", "v4"),
    ("http://HOOKS.example.test.:{v4}/", "v4"),
    ("http://127.0.0.1.nip.example.test:{v4}/", "v4"),
    ("http://mapped.example.test:{v4}/", "v4"),
    ("http://v6.example.test:{v6}/", "v6"),
]


@pytest.fixture
def loopback_receivers(make_receiver):
    return {"v4": make_receiver("127.0.0.1"), "v6": make_receiver("::1")}


def url_for_receivers(template, receivers):
    return template.format(v4=receivers["v4"].port, v6=receivers["v6"].port)


def assert_nothing_received(receivers):
    for receiver in receivers.values():
        assert receiver.requests == []
        assert receiver.connection_count == 0


@NO_ALLOWED_NETWORKS
def test_loopback_spellings_refused(manager_client, loopback_receivers, outbound, subtests):
    outbound.names.update(RESOLVED_NAMES)
    templates = [url for url, _ in LOOPBACK_SPELLINGS + NAME_SPELLINGS]
    for template in templates + UNSPECIFIED_SPELLINGS + GATEWAY_SPELLINGS:
        url = url_for_receivers(template, loopback_receivers)
        with subtests.test(url=url):
            result = post_test_now(manager_client, url)

            assert not result.succeeded
            assert "address not allowed" in result.text
            assert POLICY_WORDS in result.text
            assert result.proof == ""
            assert outbound.connections == []
            assert_nothing_received(loopback_receivers)


def test_loopback_spellings_reach_receiver_when_allowed(
    manager_client, loopback_receivers, outbound, subtests
):
    """With loopback allowed, the same URLs reach the receiver, so the refusals count."""
    outbound.names.update(RESOLVED_NAMES)
    for template, reaches in LOOPBACK_SPELLINGS + NAME_SPELLINGS:
        if reaches is None:
            continue
        url = url_for_receivers(template, loopback_receivers)
        receiver = loopback_receivers[reaches]
        receiver.clear()
        with subtests.test(url=url):
            result = post_test_now(manager_client, url)

            assert result.succeeded, result.text
            assert len(receiver.requests) == 1


def test_unspecified_refused_with_loopback_allowed(
    manager_client, loopback_receivers, outbound, subtests
):
    outbound.names.update(RESOLVED_NAMES)
    for template in UNSPECIFIED_SPELLINGS:
        url = url_for_receivers(template, loopback_receivers)
        with subtests.test(url=url):
            result = post_test_now(manager_client, url)

            assert not result.succeeded
            assert "address not allowed" in result.text
            assert outbound.connections == []
            assert_nothing_received(loopback_receivers)


@pytest.mark.parametrize("template", GATEWAY_SPELLINGS)
def test_gateway_forms_refused_with_loopback_allowed(
    manager_client, loopback_receivers, outbound, template
):
    result = post_test_now(manager_client, url_for_receivers(template, loopback_receivers))

    assert "address not allowed" in result.text
    assert outbound.connections == []


INTERNAL_ADDRESSES = [
    ("http://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
    ("http://localhost/", "a loopback address"),
    ("http://0.0.0.0/", "0.0.0.0 is the unspecified address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://2852039166/latest/meta-data/", "cloud metadata"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ("http://metadata.example.test/", "cloud metadata"),
    ("http://10.0.0.5/", "10.0.0.5 is a private address"),
    ("http://012.0.0.5/", "10.0.0.5 is a private address"),
    ("http://192.168.1.1/", "a private address"),
    ("http://[fd00::1]/", "a unique-local address"),
    ("http://[fe80::1]/", "a link-local address"),
    ("http://2130706433/", "127.0.0.1 is a loopback address"),
    ("http://0x7f000001/", "127.0.0.1 is a loopback address"),
    ("http://127.1/", "127.0.0.1 is a loopback address"),
    ("http://localhost./", "a loopback address"),
]


@NO_ALLOWED_NETWORKS
def test_internal_address_messages(manager_client, outbound, subtests):
    outbound.names["metadata.example.test"] = ["169.254.169.254"]
    for url, words in INTERNAL_ADDRESSES:
        with subtests.test(url=url):
            result = post_test_now(manager_client, url)

            assert not result.succeeded
            assert "address not allowed" in result.text
            assert words in result.text
            assert POLICY_WORDS in result.text

    assert outbound.connections == []


@NO_ALLOWED_NETWORKS
def test_save_rejects_loopback_despite_proof(app, users, manager_client, receiver):
    """A proof from before the allowed networks were narrowed does not let Save through."""
    url = receiver.url("/in")
    proof = proof_for(app, users["manager"][2], url=url)

    response = save(manager_client, url, proof)

    assert response.status_code == 422
    errors = field_errors(response.text)
    assert len(errors) == 1
    assert "address not allowed" in errors[0]
    assert automation_count(app) == 0


# --- Long and non-ASCII URLs ------------------------------------------------------------


def padded_url(base, length):
    return base + "a" * (length - len(base))


def test_long_url_is_form_error(app, users, manager_client, receiver):
    url = padded_url(receiver.url("/"), 5000)
    proof = proof_for(app, users["manager"][2], url=url)

    result = post_test_now(manager_client, url)
    response = save(manager_client, url, proof)

    assert len(url) == 5000
    assert "The URL is 5,000 characters long, over the limit of 2,048." in result.text
    assert result.proof == ""
    assert response.status_code == 422
    assert "5,000 characters" in field_errors(response.text)[0]
    assert receiver.requests == []
    assert automation_count(app) == 0


def test_url_long_after_encoding_is_form_error(manager_client, receiver):
    url = receiver.url("/") + "é" * 700  # 6 characters each once percent-encoded

    result = post_test_now(manager_client, url)

    assert len(url) < 2048
    assert "over the limit of 2,048" in result.text
    assert receiver.requests == []


def test_url_at_length_limit_is_sent(manager_client, receiver):
    url = padded_url(receiver.url("/"), 2048)

    result = post_test_now(manager_client, url)

    assert result.succeeded, result.text
    (request,) = receiver.wait_for_requests(1)
    assert request.path == url[len(receiver.base_url) :]


@pytest.mark.parametrize("host", ["bücher.example.test", "пример.испытание", "例え.テスト"])
def test_unicode_host_sent_as_punycode(app, manager_client, receiver, outbound, host):
    punycode = idna.encode(host, uts46=True).decode("ascii")
    outbound.names[punycode] = ["127.0.0.1"]
    url = f"http://{host}:{receiver.port}/in"

    result = post_test_now(manager_client, url)
    response = save(manager_client, url, result.proof)

    assert punycode.startswith("xn--")
    assert result.succeeded, result.text
    assert result.request_url == f"http://{punycode}:{receiver.port}/in"
    (request,) = receiver.wait_for_requests(1)
    assert request.headers["Host"] == f"{punycode}:{receiver.port}"
    assert outbound.lookups == [punycode]
    assert response.status_code == 302, field_errors(response.text)
    assert stored_urls(app) == [result.request_url]


def test_unicode_path_percent_encoded(manager_client, receiver):
    result = post_test_now(manager_client, receiver.url("/größe?q=ä b"))

    assert result.succeeded, result.text
    (request,) = receiver.wait_for_requests(1)
    assert request.path == "/gr%C3%B6%C3%9Fe?q=%C3%A4%20b"


INVALID_HOSTS = [
    ("http://☃.example.test/", "not a valid internationalized domain name"),
    ("http://xn--zz.example.test/", "is not valid"),
    ("http://exa mple.test/", "is not valid"),
    ("http://-bad-.example.test/", "is not valid"),
    ("http://" + "a" * 64 + ".example.test/", "is not valid"),
    ("http://[::1%25eth0]/", "zone identifiers are not allowed"),
    ("http://4294967296/", "not a valid one"),
    ("http://127.0.0.1:99999/", "not a number from 1 to 65535"),
    ("http://127%2e0%2e0%2e1/", "is not valid"),
    ("http://127.0.0.1\\@hooks.example.test/", "backslash"),
]


def test_invalid_hosts_are_form_errors(app, users, manager_client, outbound, subtests):
    for url, words in INVALID_HOSTS:
        with subtests.test(url=url):
            proof = proof_for(app, users["manager"][2], url=url)

            result = post_test_now(manager_client, url)
            response = save(manager_client, url, proof)

            assert not result.succeeded
            assert words in result.text
            assert response.status_code == 422
            assert words in field_errors(response.text)[0]

    assert outbound.lookups == []
    assert outbound.connections == []
    assert automation_count(app) == 0
