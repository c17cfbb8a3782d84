"""Salesforce outbound messages (SOAP 1.1): safe parsing, the Ack and the faults.

The body is untrusted: defusedxml refuses DTDs and entities (billion laughs, XXE) before
anything is expanded, and every id is checked and normalised to 18 characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from pydantic import ValidationError

from services.common.messages import SfRecord
from services.common.sfid import InvalidSalesforceId, to18

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND = "http://soap.sforce.com/2005/09/outbound"
SOBJECT = "urn:sobject.enterprise.soap.sforce.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
MAX_NOTIFICATIONS = 100

_O = f"{{{OUTBOUND}}}"
_S = f"{{{SOBJECT}}}"


class SoapFault(Exception):
    def __init__(self, status: int, message: str, *, code: Literal["Client", "Server"] = "Client"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def body(self) -> bytes:
        return fault_body(self.message, self.code)


@dataclass(frozen=True)
class Notification:
    id: str
    record: SfRecord


@dataclass(frozen=True)
class OutboundMessage:
    organization_id: str
    action_id: str | None
    notifications: tuple[Notification, ...]


def parse_outbound_message(body: bytes) -> OutboundMessage:
    root = _parse_xml(body)
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise SoapFault(400, "not a SOAP 1.1 envelope")
    notifications = root.find(f"{{{SOAP_ENV}}}Body/{_O}notifications")
    if notifications is None:
        raise SoapFault(400, "no <notifications> element in the outbound namespace")
    org = _required_id(notifications, f"{_O}OrganizationId", "OrganizationId")
    action_text = _text(notifications, f"{_O}ActionId")
    action = _id(action_text, "ActionId") if action_text else None
    items = notifications.findall(f"{_O}Notification")
    if not items:
        raise SoapFault(400, "the message holds no Notification")
    if len(items) > MAX_NOTIFICATIONS:
        raise SoapFault(
            400, f"{len(items)} notifications: Salesforce sends at most {MAX_NOTIFICATIONS}"
        )
    parsed = tuple(_notification(item, action, position) for position, item in enumerate(items, 1))
    return OutboundMessage(org, action, parsed)


def _parse_xml(body: bytes) -> Element:
    if not body.strip():
        raise SoapFault(400, "empty body: expected a SOAP envelope")
    try:
        return SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        kind = type(exc).__name__.removesuffix("Forbidden")
        raise SoapFault(
            400, f"refused: the XML declares a {kind}; DTDs and entities are not allowed"
        ) from None
    except ParseError as exc:
        raise SoapFault(400, f"malformed XML: {exc}") from None


def _notification(item: Element, action: str | None, position: int) -> Notification:
    where = f"Notification {position}"
    notification_id = _required_id(item, f"{_O}Id", f"{where}: Id")
    sobject = item.find(f"{_O}sObject")
    if sobject is None:
        raise SoapFault(400, f"{where}: no sObject")
    kind = (sobject.get(f"{{{XSI}}}type") or "").split(":")[-1]
    if kind not in ("Lead", "Contact"):
        raise SoapFault(400, f"{where}: sObject type {kind or 'missing'!r} is not Lead or Contact")
    fields = {
        "object": kind,
        "record_id": _required_id(sobject, f"{_S}Id", f"{where}: sf:Id"),
        "owner_id": _required_id(sobject, f"{_S}OwnerId", f"{where}: sf:OwnerId"),
        "email": _text(sobject, f"{_S}Email"),
        "system_modstamp": _required(sobject, f"{_S}SystemModstamp", f"{where}: SystemModstamp"),
        "created_date": _text(sobject, f"{_S}CreatedDate"),
        "action_id": action,
        "status": _text(sobject, f"{_S}Status"),
        "last_activity_date": _text(sobject, f"{_S}LastActivityDate"),
    }
    try:
        record = SfRecord.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SoapFault(400, f"{where}: {problems}") from None
    if record.system_modstamp.tzinfo is None:
        raise SoapFault(400, f"{where}: SystemModstamp has no time zone")
    return Notification(notification_id, record)


def _text(parent: Element, path: str) -> str | None:
    element = parent.find(path)
    if element is None or element.get(f"{{{XSI}}}nil") == "true":
        return None
    text = (element.text or "").strip()
    return text or None


def _required(parent: Element, path: str, name: str) -> str:
    value = _text(parent, path)
    if value is None:
        raise SoapFault(400, f"{name} is missing")
    return value


def _required_id(parent: Element, path: str, name: str) -> str:
    return _id(_required(parent, path, name), name)


def _id(value: str, name: str) -> str:
    try:
        return to18(value)
    except InvalidSalesforceId as exc:
        raise SoapFault(400, f"{name}: {exc}") from None


def ack_body() -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}"><soapenv:Body>'
        f'<notificationsResponse xmlns="{OUTBOUND}"><Ack>true</Ack></notificationsResponse>'
        "</soapenv:Body></soapenv:Envelope>"
    ).encode()


def fault_body(message: str, code: str = "Client") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>soapenv:{code}</faultcode><faultstring>{escape(message)}</faultstring>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    ).encode()
