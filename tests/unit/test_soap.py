from pathlib import Path

import pytest

from services.receiver.soap import SoapFault, ack_body, fault_body, parse_outbound_message

SF = Path(__file__).parents[2] / "services/demo/fixtures/salesforce"


def test_outbound_message_is_parsed_with_normalised_ids() -> None:
    message = parse_outbound_message((SF / "lead-created-15-char-ids.xml").read_bytes())
    assert message.organization_id == "00D5g0000T7kun6EQA"
    [notification] = message.notifications
    assert notification.id == "04l5g0000K3T3GlAQK"
    assert notification.record.record_id == "00Q5g0000IXRUVNEQ5"
    assert notification.record.owner_id == "0055g0000Zti3ElAQI"
    assert notification.record.system_modstamp.tzinfo is not None


def test_contact_notifications_keep_their_object_type() -> None:
    message = parse_outbound_message((SF / "contact-created.xml").read_bytes())
    assert message.notifications[0].record.object == "Contact"


def test_a_hundred_notifications_are_accepted() -> None:
    message = parse_outbound_message((SF / "lead-created-batch-100.xml").read_bytes())
    assert len(message.notifications) == 100


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("101-notifications.xml", "at most 100"),
        ("bad-record-id.xml", "not a Salesforce id"),
        ("billion-laughs.xml", "DTD"),
        ("xxe-external-entity.xml", "DTD"),
        ("missing-owner.xml", "OwnerId is missing"),
        ("not-soap.json", "malformed XML"),
        ("truncated.xml", "malformed XML"),
    ],
)
def test_hostile_or_broken_messages_raise_a_client_fault_that_says_why(
    name: str, words: str
) -> None:
    with pytest.raises(SoapFault) as raised:
        parse_outbound_message((SF / "bad" / name).read_bytes())
    assert raised.value.status == 400 and words in raised.value.message


def test_the_ack_and_the_fault_are_soap_envelopes() -> None:
    assert b"<Ack>true</Ack>" in ack_body()
    assert b"<faultstring>a &lt;b&gt;</faultstring>" in fault_body("a <b>")


def test_status_and_last_activity_date_are_read_when_sent() -> None:
    body = (
        (SF / "lead-reassigned-connected.xml")
        .read_bytes()
        .replace(
            b"<sf:Email>",
            b"<sf:Status>Working - Contacted</sf:Status>"
            b"<sf:LastActivityDate>2026-11-03</sf:LastActivityDate><sf:Email>",
        )
    )
    record = parse_outbound_message(body).notifications[0].record
    assert (record.status, str(record.last_activity_date)) == ("Working - Contacted", "2026-11-03")
    plain = parse_outbound_message((SF / "lead-reassigned-connected.xml").read_bytes())
    assert (
        plain.notifications[0].record.status,
        plain.notifications[0].record.last_activity_date,
    ) == (None, None)


def test_a_last_activity_date_that_is_no_date_is_a_client_fault() -> None:
    body = (
        (SF / "lead-reassigned-connected.xml")
        .read_bytes()
        .replace(b"<sf:Email>", b"<sf:LastActivityDate>yesterday</sf:LastActivityDate><sf:Email>")
    )
    with pytest.raises(SoapFault) as fault:
        parse_outbound_message(body)
    assert fault.value.status == 400 and "last_activity_date" in fault.value.message
