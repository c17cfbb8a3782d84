import base64
import hashlib
import hmac

import pytest

from services.receiver.signatures import SignatureError, sign, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"type":"prospect.created"}'


def test_signature_is_hmac_sha256_of_id_timestamp_body_with_the_decoded_secret() -> None:
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    expected = hmac.new(key, b"msg_1.1700000000." + BODY, hashlib.sha256).digest()
    assert sign(SECRET, "msg_1", 1700000000, BODY) == "v1," + base64.b64encode(expected).decode()


def _verify(**overrides: object) -> None:
    args: dict[str, object] = {
        "webhook_id": "msg_1",
        "timestamp": "1700000000",
        "signature": sign(SECRET, "msg_1", 1700000000, BODY),
        "body": BODY,
        "now": 1700000000.0,
    }
    args.update(overrides)
    verify([SECRET], **args)  # type: ignore[arg-type]


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
def test_bad_signatures_say_what_is_wrong(overrides: dict[str, object], words: str) -> None:
    with pytest.raises(SignatureError, match=words.replace("(", r"\(").replace(")", r"\)")):
        _verify(**overrides)
