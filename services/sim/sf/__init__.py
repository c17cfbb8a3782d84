"""Salesforce simulator: the REST subset ownersync calls, one active lead assignment rule, and
outbound messages delivered with Salesforce's habits. These are the names used outside
`services.sim`; inside it, import from the module that owns the name."""

from services.sim.sf.app import create_sf_app
from services.sim.sf.org import CallRecord, SfSimState, format_sf_datetime
from services.sim.sf.soap import (
    OUTBOUND_NS,
    SOBJECT_NS,
    OutboundNotification,
    build_outbound_message,
)

__all__ = [
    "OUTBOUND_NS",
    "SOBJECT_NS",
    "CallRecord",
    "OutboundNotification",
    "SfSimState",
    "build_outbound_message",
    "create_sf_app",
    "format_sf_datetime",
]
