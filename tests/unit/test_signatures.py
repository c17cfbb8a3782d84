import base64
import hashlib
import hmac
from typing import TypedDict

import pytest

from services.receiver.signatures import SignatureError, sign, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"type":"prospect.created"}'


def test_signature_is_hmac_sha256_of_id_timestamp_body_with_the_decoded_secret() -> None:
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    expected = hmac.new(key, b"msg_1.1700000000." + BODY, hashlib.sha256).digest()
    assert sign(SECRET, "msg_1", 1700000000, BODY) == "v1," + base64.b64encode(expected).decode()


class _Overrides(TypedDict, total=False):
    webhook_id: str | None
    timestamp: str | None
    signature: str | None
    body: bytes
    now: float


def _verify(
    *,
    webhook_id: str | None = "msg_1",
    timestamp: str | None = "1700000000",
    signature: str | None = sign(SECRET, "msg_1", 1700000000, BODY),
    body: bytes = BODY,
    now: float = 1700000000.0,
) -> None:
    verify(
        [SECRET],
        webhook_id=webhook_id,
        timestamp=timestamp,
        signature=signature,
        body=body,
        now=now,
    )


def test_a_correct_signature_verifies() -> None:
    _verify()


def test_one_matching_signature_among_several_verifies() -> None:
    _verify(signature="v1,AAAA " + sign(SECRET, "msg_1", 1700000000, BODY))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"signature": None}, "missing header(s): webhook-signature"),
        ({"webhook_id": None, "timestamp": None}, "webhook-id, webhook-timestamp"),
        ({"timestamp": "yesterday"}, "not unix seconds"),
        ({"now": 1700000000.0 + 301}, "tolerance"),
        ({"now": 1700000000.0 - 301}, "tolerance"),
        ({"body": BODY + b" "}, "does not match"),
        ({"signature": "v2,abc"}, "no v1 signature"),
    ],
)
def test_bad_signatures_say_what_is_wrong(overrides: _Overrides, words: str) -> None:
    with pytest.raises(SignatureError, match=words.replace("(", r"\(").replace(")", r"\)")):
        _verify(**overrides)
