import pytest

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
