"""An SMTP server on loopback for the tests, built on aiosmtpd.

Load it as a pytest plugin. The `smtp_server` fixture gives one server for the
whole run, emptied and set back to accepting mail before each test. A test can
stop it (connections are refused), make it reject messages, or make it drop or
stall the connection after it has taken the message data.
"""

import asyncio
import contextlib
import email
import threading
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller

from tests.support.redis_server import free_port

# What the server does once a client has sent the message data.
ACCEPT = "accept"
# Reply 554, so the client knows that the message was not taken.
REJECT = "reject"
# Store the message, then close the connection before replying.
DROP_AFTER_DATA = "drop_after_data"
# Store the message, then wait `stall_seconds` before replying.
STALL_AFTER_DATA = "stall_after_data"
MODES = (ACCEPT, REJECT, DROP_AFTER_DATA, STALL_AFTER_DATA)


@dataclass
class ReceivedMessage:
    """One message that the server took, with its SMTP envelope."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self):
        return self.message["Subject"]

    @property
    def text(self):
        """Return the plain-text body, decoded."""
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""


class RecordingHandler:
    """aiosmtpd handler that stores every message and obeys the current mode."""

    def __init__(self):
        self.messages = []
        self.mode = ACCEPT
        self.stall_seconds = 5.0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        if self.mode == REJECT:
            return "554 5.7.1 Message rejected by the test server"

        message = email.message_from_bytes(envelope.content, policy=policy.default)
        received = ReceivedMessage(envelope.mail_from, list(envelope.rcpt_tos), message)
        with self.lock:
            self.messages.append(received)

        if self.mode == DROP_AFTER_DATA:
            server.transport.abort()
            # Closing the connection cancels this hook, so no reply is ever sent.
            await asyncio.Event().wait()
        if self.mode == STALL_AFTER_DATA:
            await asyncio.sleep(self.stall_seconds)
        return "250 2.0.0 OK"


class SMTPServer:
    """An aiosmtpd server on a free loopback port that tests can stop and start."""

    def __init__(self):
        self.host = "127.0.0.1"
        self.port = free_port()
        self.handler = RecordingHandler()
        self.controller = None

    @property
    def messages(self):
        """Return a copy of the messages received so far, oldest first."""
        with self.handler.lock:
            return list(self.handler.messages)

    def wait_for(self, count, timeout=5.0):
        """Return the messages once at least `count` arrived; raise on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages
            if len(messages) >= count:
                return messages
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"expected {count} messages within {timeout} s, received {len(messages)}"
                )
            time.sleep(0.02)

    @property
    def running(self):
        return self.controller is not None

    def start(self):
        if self.controller is not None:
            return
        # A controller owns an event loop that stop() closes, so each start
        # needs a new one.
        self.controller = Controller(self.handler, hostname=self.host, port=self.port)
        self.controller.start()

    def stop(self):
        """Stop listening, so that connections to the port are refused."""
        if self.controller is None:
            return
        self.controller.stop()
        self.controller = None

    @contextlib.contextmanager
    def down(self):
        """Refuse connections inside the block, then listen again."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def set_mode(self, mode, stall_seconds=None):
        """Choose what the server does after DATA; see MODES."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}, expected one of {MODES}")
        self.handler.mode = mode
        if stall_seconds is not None:
            self.handler.stall_seconds = stall_seconds

    def reset(self):
        """Forget received messages, accept mail again and make sure it listens."""
        with self.handler.lock:
            self.handler.messages.clear()
        self.set_mode(ACCEPT)
        self.start()


@pytest.fixture(scope="session")
def smtp_server_session():
    server = SMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp_server(smtp_server_session):
    """The run's SMTP server, with no messages and accepting mail."""
    smtp_server_session.reset()
    yield smtp_server_session
    smtp_server_session.reset()
