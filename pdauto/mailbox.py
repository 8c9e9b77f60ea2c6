"""A local SMTP server for development that stores each message as a .eml file.

Run it with `python -m pdauto.mailbox`; `python -m pdauto.devserver` starts it for
the one-command local run. It accepts mail for any recipient without authentication,
so it listens on loopback by default.
"""

import argparse
import email
import logging
import os
import signal
import threading
import uuid
from datetime import UTC, datetime
from email import policy
from pathlib import Path

from aiosmtpd.controller import Controller

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8025


class MailDirectoryHandler:
    """aiosmtpd handler that writes every message it accepts into one directory."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope):
        path = self.store(envelope.mail_from, envelope.rcpt_tos, envelope.original_content)
        message = email.message_from_bytes(envelope.original_content, policy=policy.default)
        subject = " ".join(str(message["Subject"] or "(no subject)").split())
        log.info("mail to %s: %s", ", ".join(envelope.rcpt_tos), subject)
        log.debug("stored %s", path)
        return "250 2.0.0 OK"

    def store(self, mail_from, rcpt_tos, content):
        """Write one message with its envelope as a .eml file and return the path.

        The file is written under a temporary name and then renamed, so a reader
        that lists *.eml never finds a partly written message.
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{stamp}-{uuid.uuid4().hex[:8]}"
        envelope_headers = [f"Return-Path: <{mail_from}>"]
        envelope_headers += [f"Delivered-To: {recipient}" for recipient in rcpt_tos]
        header_bytes = "\r\n".join(envelope_headers).encode("utf-8") + b"\r\n"

        partial = self.directory / f".{name}.tmp"
        final = self.directory / f"{name}.eml"
        partial.write_bytes(header_bytes + content)
        os.replace(partial, final)
        return final


def start(directory, host=DEFAULT_HOST, port=DEFAULT_PORT):
    """Start the SMTP server in a background thread and return its Controller.

    Raises OSError when the address cannot be bound, for example a port in use.
    Call `.stop()` on the result to stop it.
    """
    controller = Controller(MailDirectoryHandler(directory), hostname=host, port=port)
    controller.start()
    return controller


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pdauto.mailbox",
        description="Accept mail on a local SMTP port and store each message as a .eml file.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("MAIL_PORT") or DEFAULT_PORT),
        help="TCP port to listen on (default: MAIL_PORT, or %(default)s)",
    )
    parser.add_argument(
        "--dir",
        dest="directory",
        type=Path,
        default=Path("var") / "mail",
        help="directory that receives the .eml files (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mailbox: %(message)s")
    # aiosmtpd 1.4 logs every SMTP command at INFO, so only its warnings and errors are kept.
    logging.getLogger("mail.log").setLevel(logging.WARNING)

    stop_requested = threading.Event()

    def request_stop(signum, frame):
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        controller = start(args.directory, args.host, args.port)
    except OSError as error:
        log.error("failed to listen on %s:%s: %s", args.host, args.port, error)
        return 1
    log.info("listening on %s:%s, storing mail in %s", args.host, args.port, args.directory)
    try:
        while not stop_requested.wait(1.0):
            pass
    finally:
        controller.stop()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
