"""Signed proofs that a Test Now request answered 2xx.

Save accepts a Call API action only with a proof for the same account and
the exact request settings that were tested, signed by this server and not
older than TEST_PROOF_MAX_AGE_SECONDS.
"""

import hashlib
import json

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

SALT = "pdauto.test-proof"


class InvalidProof(Exception):
    """The proof is missing, expired, or for other settings; str(e) names which."""


def request_fingerprint(url, content_type, custom_headers):
    """Return a digest of the settings that change what a test request sends."""
    canonical = json.dumps(
        {
            "url": url,
            "content_type": content_type,
            "headers": sorted((custom_headers or {}).items()),
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _serializer():
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def issue_proof(account_id, fingerprint):
    return _serializer().dumps({"account": account_id, "request": fingerprint})


def check_proof(token, account_id, fingerprint):
    """Raise InvalidProof unless `token` proves a 2xx test of these settings."""
    if not token:
        raise InvalidProof("Press Test Now: the URL must answer 2xx before you can save.")
    try:
        data = _serializer().loads(token, max_age=current_app.config["TEST_PROOF_MAX_AGE_SECONDS"])
    except SignatureExpired:
        raise InvalidProof(
            "The last test is too old. Press Test Now again before saving."
        ) from None
    except BadSignature:
        raise InvalidProof("The test result is not valid. Press Test Now again.") from None

    if data.get("account") != account_id or data.get("request") != fingerprint:
        raise InvalidProof(
            "The URL or request settings changed after the last test. "
            "Press Test Now again before saving."
        )
