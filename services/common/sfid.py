"""Salesforce record ids: 15 characters (case-sensitive) or 18 (case-insensitive).

Everything inside ownersync stores and compares the 18-character form.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_SHAPE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-5]{3})?$")


# The digits of an id's serial, in the order of their values.
SERIAL_DIGITS = string.digits + string.ascii_uppercase + string.ascii_lowercase
_BASE62 = {c: v for v, c in enumerate(SERIAL_DIGITS)}


class InvalidSalesforceId(ValueError):
    pass


# Each character of an id as a bit: 1 for an upper-case letter, 0 for anything else.
_CASE_BITS = str.maketrans({chr(c): "1" if "A" <= chr(c) <= "Z" else "0" for c in range(128)})


def _suffix(id15: str) -> str:
    # A chunk's bits read from its last character to its first give the suffix letter.
    bits = id15.translate(_CASE_BITS)
    return "".join(_ALPHABET[int(bits[start : start + 5][::-1], 2)] for start in (0, 5, 10))


def to18(value: str) -> str:
    """The canonical 18-character form of a 15- or 18-character id.

    An 18-character id may arrive in any letter case: the suffix says which of the first
    15 characters are upper case, so the case is restored from it and the result checked.
    """
    if not isinstance(value, str):
        raise InvalidSalesforceId(f"not a Salesforce id (15 or 18 letters and digits): {value!r}")
    return _canonical(value.strip())


# Every event carries the same few owner and action ids, and each id is checked at the
# receiver, in the event's schema and again when a worker reads the event: remembered, an id
# costs one dictionary look-up after its first time. Record ids pass through too, each once
# or a few times, so the cache is small: the owner and action ids, named in every event,
# stay in it (least recently used goes first) while record ids churn through. At 65,536
# entries, record ids alone filled it and held ~11 MB in every process that reads events.
SF_ID_CACHE_SIZE = 2048


@lru_cache(maxsize=SF_ID_CACHE_SIZE)
def _canonical(value: str) -> str:
    if not _SHAPE.match(value):
        raise InvalidSalesforceId(f"not a Salesforce id (15 or 18 letters and digits): {value!r}")
    if len(value) == 15:
        return value + _suffix(value)
    if _suffix(value[:15]) == value[15:]:
        return value  # already canonical, as SF and ownersync's own messages send it
    suffix = value[15:].upper()
    chars = list(value[:15])
    for chunk, code in enumerate(suffix):
        bits = _ALPHABET.index(code)
        for offset in range(5):
            i = chunk * 5 + offset
            chars[i] = chars[i].upper() if bits & (1 << offset) else chars[i].lower()
    id15 = "".join(chars)
    if _suffix(id15) != suffix:
        raise InvalidSalesforceId(f"Salesforce id with a wrong checksum suffix: {value!r}")
    return id15 + suffix


def _validate(value: str) -> str:
    try:
        return to18(value)
    except InvalidSalesforceId as exc:
        raise ValueError(str(exc)) from None


SfId = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=18), AfterValidator(_validate)
]
"""A pydantic field type: accepts 15 or 18 characters, holds the 18-character form."""

KEY_PREFIX_QUEUE = "00G"
KEY_PREFIX_USER = "005"
KEY_PREFIX_LEAD = "00Q"
KEY_PREFIX_CONTACT = "003"


def is_queue(sf_id: str) -> bool:
    return sf_id.startswith(KEY_PREFIX_QUEUE)


def serial(value: str) -> int | None:
    """The serial of a 15- or 18-character id (its characters 7 to 15, base 62) as a number, or
    None for anything else. SF hands serials out in increasing order, so an id's serial orders
    it by age (roughly: each server takes a block of serials at a time)."""
    if not _SHAPE.match(value):
        return None
    number = 0
    for char in value[6:15]:
        number = number * 62 + _BASE62[char]
    return number
