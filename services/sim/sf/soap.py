"""Salesforce's outbound message on the wire: the SOAP envelope it posts and the ack it awaits."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from defusedxml import ElementTree as SafeET

SObjectType = Literal["Lead", "Contact"]

SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
SOBJECT_NS = "urn:sobject.enterprise.soap.sforce.com"

# The sObject fields of an outbound message, in the order Salesforce writes them (see fixtures).
OUTBOUND_FIELDS = ("Id", "Email", "OwnerId", "SystemModstamp", "CreatedDate")


@dataclass(frozen=True)
class OutboundNotification:
    notification_id: str
    sobject: SObjectType
    fields: tuple[tuple[str, str | None], ...]  # a snapshot taken when the record was written
    sequence: int


def build_outbound_message(
    *,
    organization_id: str,
    action_id: str,
    enterprise_url: str,
    partner_url: str,
    notifications: Sequence[OutboundNotification],
) -> bytes:
    """The SOAP 1.1 envelope Salesforce posts, with the fixtures' prefixes and declarations."""
    # Tags carry literal prefixes (not Clark names) so the namespace declarations sit exactly
    # where Salesforce puts them; ElementTree still does the escaping.
    envelope = ET.Element(
        "soapenv:Envelope", {"xmlns:soapenv": SOAP_ENV_NS, "xmlns:xsd": XSD_NS, "xmlns:xsi": XSI_NS}
    )
    root = ET.SubElement(ET.SubElement(envelope, "soapenv:Body"), "notifications")
    root.set("xmlns", OUTBOUND_NS)
    _text_element(root, "OrganizationId", organization_id)
    _text_element(root, "ActionId", action_id)
    _text_element(root, "SessionId", None)
    _text_element(root, "EnterpriseUrl", enterprise_url)
    _text_element(root, "PartnerUrl", partner_url)
    for notification in notifications:
        element = ET.SubElement(root, "Notification")
        _text_element(element, "Id", notification.notification_id)
        sobject = ET.SubElement(
            element, "sObject", {"xsi:type": f"sf:{notification.sobject}", "xmlns:sf": SOBJECT_NS}
        )
        for name, value in notification.fields:
            _text_element(sobject, f"sf:{name}", value)
    ET.indent(envelope, space=" ")
    declaration = b'<?xml version="1.0" encoding="UTF-8"?>\n'
    document: bytes = ET.tostring(envelope, encoding="utf-8", xml_declaration=False)
    return declaration + document


def _text_element(parent: ET.Element, tag: str, value: str | None) -> None:
    if value is None:
        ET.SubElement(parent, tag, {"xsi:nil": "true"})
    else:
        ET.SubElement(parent, tag).text = value


def is_ack(body: bytes) -> bool:
    try:
        root = SafeET.fromstring(body)
    except Exception:  # any unparsable answer is simply not an ack
        return False
    return any(
        element.tag.rpartition("}")[2] == "Ack" and (element.text or "").strip() == "true"
        for element in root.iter()
    )
