"""Test Now through the app: the builder's button, the view and its result fragment.

Every request goes to a receiver on 127.0.0.1 or ::1. The sender's DNS lookups
are replaced by a resolver that returns addresses only for names a test sets, and
an autouse guard rejects and records any connection to a non-loopback address, so
these tests cannot reach another host even if the address policy broke.
"""

import base64
import ipaddress
import re
import socket
from html.parser import HTMLParser

import pytest
from flask import url_for

from pdauto import proofs, webhooks
from tests.conftest import login
from tests.factories import make_automation

HX = {"HX-Request": "true"}
NAME = "Deal won"


# --- Helpers shared with test_url_input.py ---------------------------------------


@pytest.fixture(autouse=True)
def outbound(monkeypatch):
    return guard_outbound(monkeypatch)


def guard_outbound(monkeypatch):
    """Replace the sender's DNS, record what it looks up and connects to, allow loopback only.

    Returns an `OutboundRecord`. A test sets `names[host] = [addresses]` to make a
    name resolve; every other name fails to resolve without a DNS query.
    """
    record = OutboundRecord()
    real_connect = socket.socket.connect

    def resolve_from_names(host, port):
        record.lookups.append(host)
        addresses = record.names.get(host)
        if addresses is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(addresses)

    def connect_loopback_only(sock, address):
        record.connections.append(address[:2])
        ip = ipaddress.ip_address(address[0])
        # Only IPv4-mapped forms stay on this machine. NAT64 and 6to4 addresses that
        # embed 127.0.0.1 are routed to a gateway, so they are blocked here.
        mapped = getattr(ip, "ipv4_mapped", None)
        if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
            raise ConnectionRefusedError("the test guard blocks non-loopback addresses")
        return real_connect(sock, address)

    monkeypatch.setattr(webhooks, "_system_resolver", resolve_from_names)
    monkeypatch.setattr(webhooks._DeadlineSocket, "connect", connect_loopback_only)
    return record


class OutboundRecord:
    """The injected DNS answers, and the lookups and connections the sender made."""

    def __init__(self):
        self.names = {}  # host name -> IP address strings
        self.lookups = []  # host names, in order
        self.connections = []  # (address, port) of every connect, refused or not


class _OutcomeParser(HTMLParser):
    """Collect the attributes and the text of the #test-outcome element."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.attributes = None
        self.depth = 0
        self.parts = []

    def handle_starttag(self, tag, attrs):
        if self.depth:
            self.depth += 1
        elif dict(attrs).get("id") == "test-outcome":
            self.attributes = dict(attrs)
            self.depth = 1

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.parts.append(data)


class TestResult:
    """The #test-outcome element of a Test Now response: its attributes and visible text."""

    __test__ = False  # not a pytest test class

    def __init__(self, response):
        self.response = response
        self.html = response.text
        parser = _OutcomeParser()
        parser.feed(self.html)
        parser.close()
        assert parser.attributes is not None, f"no #test-outcome in:\n{self.html}"
        self.attributes = parser.attributes
        self.text = " ".join(" ".join(parser.parts).split())

    @property
    def succeeded(self):
        return self.attributes.get("data-succeeded") == "true"

    @property
    def proof(self):
        return self.attributes.get("data-proof") or ""

    @property
    def tested_url(self):
        return self.attributes.get("data-tested-url")

    @property
    def duration_ms(self):
        match = re.search(r"\b(?:in|after) (\d+) ms\b", self.text)
        assert match, f"no duration in: {self.text}"
        return int(match.group(1))

    @property
    def request_url(self):
        match = re.search(r"\bPOST (\S+)", self.text)
        assert match, f"no request URL in: {self.text}"
        return match.group(1)


def builder_fields(url, **overrides):
    fields = {
        "name": NAME,
        "event_model": "deal",
        "event_action": "updated",
        "url": url,
        "failure_email": "ops@example.com",
    }
    fields.update(overrides)
    return fields


def builder_test_now_url(client):
    """Return the hx-post URL of the builder's Test Now button."""
    page = client.get("/automations/new")
    assert page.status_code == 200
    match = re.search(r'<button[^>]*id="test-now-button"[^>]*>', page.text)
    assert match, "the builder has no Test Now button"
    hx_post = re.search(r'hx-post="([^"]+)"', match.group(0))
    assert hx_post, "the Test Now button has no hx-post"
    return hx_post.group(1)


def post_test_now(client, url, **overrides):
    response = client.post(
        builder_test_now_url(client), data=builder_fields(url, **overrides), headers=HX
    )
    assert response.status_code == 200, response.text
    return TestResult(response)


def url_for_test_now(app):
    with app.test_request_context():
        return url_for("automations.test_now")


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- The builder's button ------------------------------------------------------------


def test_builder_has_test_now_button(app, manager_client):
    assert builder_test_now_url(manager_client) == url_for_test_now(app)


def test_builder_save_disabled_until_test(manager_client):
    page = manager_client.get("/automations/new")

    button = re.search(r'<button[^>]*id="save-button"[^>]*>', page.text)
    assert button
    assert "disabled" in button.group(0)
    assert 'id="test-result"' in page.text


# --- Outcomes shown in the fragment --------------------------------------------------


def test_ok_with_body_shows_excerpt(users, manager_client, receiver):
    receiver.respond("/in", 200, body="<b>thanks</b> & see you")

    result = post_test_now(manager_client, receiver.url("/in"))

    assert result.succeeded
    assert "Success: 200 OK" in result.text
    assert result.duration_ms >= 0
    assert "<b>thanks</b> & see you" in result.text
    assert "&lt;b&gt;thanks&lt;/b&gt; &amp; see you" in result.html
    assert "<b>thanks</b>" not in result.html
    assert result.proof
    assert result.tested_url == receiver.url("/in")


def test_ok_proof_matches_tested_settings(app, users, manager_client, receiver):
    result = post_test_now(manager_client, receiver.url("/in"))

    fingerprint = proofs.request_fingerprint(receiver.url("/in"), "application/json", {})
    with app.test_request_context():
        proofs.check_proof(result.proof, users["manager"][2], fingerprint)
        with pytest.raises(proofs.InvalidProof):
            proofs.check_proof(result.proof, users["other"][2], fingerprint)


def test_no_content_is_success(manager_client, receiver):
    receiver.respond("/in", 204, body=b"")

    result = post_test_now(manager_client, receiver.url("/in"))

    assert result.succeeded
    assert "Success: 204 No Content" in result.text
    assert result.duration_ms >= 0
    assert "You can save the automation now." in result.text
    assert result.proof


def test_server_error_shows_message(manager_client, receiver):
    receiver.respond("/in", 500, body="database is down, sorry")

    result = post_test_now(manager_client, receiver.url("/in"))

    assert not result.succeeded
    assert "Failed: 500 Internal Server Error" in result.text
    assert "the receiver answered 500 Internal Server Error" in result.text
    assert "database is down, sorry" in result.text
    assert result.duration_ms >= 0
    assert result.proof == ""
    assert "You can save" not in result.text


def test_redirect_not_followed(manager_client, receiver):
    final = receiver.url("/final")
    receiver.respond("/moved", 302, body=b"", headers={"Location": final})

    result = post_test_now(manager_client, receiver.url("/moved"))

    assert not result.succeeded
    assert "302 Found" in result.text
    assert f"redirected to {final}; redirects are not followed" in result.text
    assert result.proof == ""
    requests = receiver.requests
    assert len(requests) == 1
    assert requests[0].method == "POST"
    assert requests[0].path == "/moved"


def test_connection_refused(manager_client):
    port = closed_port()

    result = post_test_now(manager_client, f"http://127.0.0.1:{port}/in")

    assert not result.succeeded
    assert f"connection refused by 127.0.0.1:{port}" in result.text
    assert result.duration_ms >= 0
    assert result.proof == ""


@pytest.mark.parametrize("app_overrides", [{"TEST_NOW_TIMEOUT_SECONDS": 0.3}])
def test_slow_receiver_times_out(manager_client, receiver):
    receiver.respond("/slow", 200, delay=1.5)

    result = post_test_now(manager_client, receiver.url("/slow"))

    assert not result.succeeded
    assert "timed out after 0.3 s" in result.text
    assert "Failed: no answer after" in result.text
    assert result.duration_ms < 1500
    assert result.proof == ""
    assert len(receiver.requests) == 1


def test_body_excerpt_is_escaped(manager_client, receiver):
    receiver.respond(
        "/in",
        200,
        body='<script>alert("x")</script>',
        headers={"X-Note": "<img src=x onerror=alert(1)>"},
    )

    result = post_test_now(manager_client, receiver.url("/in"))

    assert result.succeeded
    assert "<script>" not in result.html
    assert "<img" not in result.html
    assert '<script>alert("x")</script>' in result.text
    assert "X-Note: <img src=x onerror=alert(1)>" in result.text


def test_tested_url_is_field_text(manager_client, receiver):
    """The browser compares data-tested-url with the URL field to decide on Save."""
    typed = receiver.base_url

    result = post_test_now(manager_client, typed)

    assert result.succeeded
    assert result.tested_url == typed
    assert result.request_url == receiver.url("/")


def test_fragment_names_request_url(manager_client, receiver):
    result = post_test_now(manager_client, receiver.url("/in?source=pdauto"))

    assert result.request_url == receiver.url("/in?source=pdauto")


# --- What the receiver gets ------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_model", "event_action"),
    [("person", "created"), ("company", "updated"), ("deal", "deleted")],
)
def test_receiver_gets_four_fields(manager_client, receiver, event_model, event_action):
    post_test_now(
        manager_client,
        receiver.url("/in"),
        name="  New lead  ",
        event_model=event_model,
        event_action=event_action,
    )

    (request,) = receiver.wait_for_requests(1)
    body = request.json()
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json"
    assert body["trigger"] == "New lead"
    assert body["event_model"] == event_model
    assert body["event_action"] == event_action
    assert type(body["event_model_id"]) is int
    assert body["test"] is True
    assert request.headers["webhook-id"].startswith("msg_")


def test_form_content_type_sends_fields(manager_client, receiver):
    post_test_now(
        manager_client,
        receiver.url("/in"),
        content_type="application/x-www-form-urlencoded",
    )

    (request,) = receiver.wait_for_requests(1)
    fields = request.form()
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert fields["trigger"] == NAME
    assert fields["event_model"] == "deal"
    assert fields["event_action"] == "updated"
    assert fields["event_model_id"].isdigit()
    assert fields["test"] == "true"


def test_each_test_has_new_webhook_id(manager_client, receiver):
    post_test_now(manager_client, receiver.url("/in"))
    post_test_now(manager_client, receiver.url("/in"))

    first, second = receiver.wait_for_requests(2)
    assert first.headers["webhook-id"] != second.headers["webhook-id"]


# --- Invalid forms and access ------------------------------------------------------


def test_missing_url_is_form_message(manager_client, outbound):
    result = post_test_now(manager_client, "")

    assert not result.succeeded
    assert "Enter the URL to call." in result.text
    assert result.attributes.get("role") == "alert"
    assert result.proof == ""
    assert outbound.connections == []


def test_missing_url_field_is_form_message(manager_client, outbound):
    fields = builder_fields("")
    del fields["url"]

    response = manager_client.post(builder_test_now_url(manager_client), data=fields, headers=HX)

    assert response.status_code == 200
    result = TestResult(response)
    assert "Enter the URL to call." in result.text
    assert outbound.connections == []


def test_unknown_model_is_form_message(manager_client, receiver):
    result = post_test_now(manager_client, receiver.url("/in"), event_model="invoice")

    assert not result.succeeded
    assert "Not a valid choice" in result.text
    assert receiver.requests == []


def test_bad_custom_header_is_form_message(manager_client, receiver):
    result = post_test_now(manager_client, receiver.url("/in"), custom_headers="Host: evil.test")

    assert not result.succeeded
    assert "Custom headers" in result.text
    assert "Host" in result.text
    assert receiver.requests == []


def test_rep_cannot_test(app, users, receiver):
    client = app.test_client()
    login(client, users["rep"][1])

    response = client.post(
        url_for_test_now(app), data=builder_fields(receiver.url("/in")), headers=HX
    )

    assert response.status_code == 403
    assert receiver.requests == []


def test_anonymous_redirected_to_login(app, client, receiver):
    response = client.post(
        url_for_test_now(app), data=builder_fields(receiver.url("/in")), headers=HX
    )

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")
    assert receiver.requests == []


def test_other_account_automation_id_ignored(app, users, manager_client, receiver):
    with app.app_context():
        other = make_automation(users["other"][2], "http://127.0.0.1:9/elsewhere")
        other_id = other.id

    result = post_test_now(manager_client, receiver.url("/in"), automation_id=str(other_id))

    assert result.succeeded
    (request,) = receiver.wait_for_requests(1)
    assert request.path == "/in"
    assert "webhook-signature" not in request.headers


def test_edit_test_keeps_saved_credentials(app, users, manager_client, receiver):
    saved_url = f"http://hook-user:s3cret-pass@127.0.0.1:{receiver.port}/in"
    with app.app_context():
        automation_id = make_automation(users["manager"][2], saved_url).id
    page = manager_client.get(f"/automations/{automation_id}/edit")
    shown = re.search(r'<input[^>]*name="url"[^>]*value="([^"]*)"', page.text).group(1)

    result = post_test_now(manager_client, shown, automation_id=str(automation_id))

    assert shown == f"http://hook-user:***@127.0.0.1:{receiver.port}/in"
    assert result.succeeded, result.text
    assert result.tested_url == shown
    assert "s3cret-pass" not in result.html
    (request,) = receiver.wait_for_requests(1)
    expected = base64.b64encode(b"hook-user:s3cret-pass").decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
