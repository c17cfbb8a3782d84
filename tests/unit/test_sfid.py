import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.sfid import InvalidSalesforceId, is_queue, to18


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("00Q5g0000IXRUVN", "00Q5g0000IXRUVNEQ5"),
        ("00D5g0000T7kun6", "00D5g0000T7kun6EQA"),
        ("0055g0000Zti3El", "0055g0000Zti3ElAQI"),
        ("0055g0000Zti3ElAQI", "0055g0000Zti3ElAQI"),
    ],
)
def test_ids_are_normalised_to_eighteen_characters(given: str, canonical: str) -> None:
    assert to18(given) == canonical


def test_eighteen_character_ids_compare_case_insensitively() -> None:
    assert to18("0055G0000ZTI3ELaqi") == "0055g0000Zti3ElAQI"
    assert to18("00q5g0000ixruvneq5") == "00Q5g0000IXRUVNEQ5"


@pytest.mark.parametrize(
    "bad", ["", "00Q5g0000IXRUV", "00Q5g0000IXRUVNE", "00Q'; DROP TABLE x;--", "00Q5g0000IXRUVN9Q5"]
)
def test_malformed_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidSalesforceId):
        to18(bad)


def test_a_suffix_that_contradicts_the_case_is_refused() -> None:
    with pytest.raises(InvalidSalesforceId):
        to18("00Q5g0000IXRUVN555")  # "5" marks digits as upper case


def test_queue_ids_are_recognised_by_their_key_prefix() -> None:
    assert is_queue("00G5g0000QQQdLAEQ1") and not is_queue("0055g0000Zti3ElAQI")


def _suffix_by_definition(id15: str) -> str:
    # Salesforce's definition: per chunk of five characters, bit i set when character i is
    # an upper-case letter; the chunk's number indexes A-Z0-5.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    return "".join(
        alphabet[sum(1 << i for i, c in enumerate(id15[start : start + 5]) if "A" <= c <= "Z")]
        for start in (0, 5, 10)
    )


@given(st.text(alphabet=string.ascii_letters + string.digits, min_size=15, max_size=15))
def test_the_suffix_marks_the_upper_case_letters_of_each_chunk(id15: str) -> None:
    assert to18(id15) == id15 + _suffix_by_definition(id15)
    assert to18((id15 + _suffix_by_definition(id15)).lower()) == id15 + _suffix_by_definition(id15)


def test_surrounding_whitespace_is_ignored_and_a_bad_id_is_refused_every_time() -> None:
    assert to18("  00Q5g0000IXRUVN\n") == "00Q5g0000IXRUVNEQ5"
    for _ in range(2):  # a refusal is not remembered as an answer
        with pytest.raises(InvalidSalesforceId):
            to18("00Q5g0000IXRUVN555")


def test_record_ids_passing_through_leave_the_cache_small_and_the_owner_ids_in_it() -> None:
    """Each event names a new record id and the same owner id: the cache keeps the owner id
    (a hit every time after the first) while 20,000 record ids churn through, and holds a few
    thousand ids at most (each costs ~180 bytes in every process that reads events)."""
    from services.common.sfid import _canonical

    _canonical.cache_clear()
    owner = "0055g0000Zti3ElAQI"
    records = 20_000
    for n in range(records):
        to18(f"00Q5g{n:010d}")
        to18(owner)
    info = _canonical.cache_info()
    assert info.currsize <= 4096
    assert info.hits >= records - 1
