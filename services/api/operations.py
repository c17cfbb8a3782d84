"""/v1/tenants/{tenant}/assignment-requests and /reconcile."""

from __future__ import annotations

from fastapi import APIRouter

from services.admin import assignments, reconcile
from services.admin.schemas import (
    AssignmentAccepted,
    AssignmentRequest,
    ReconcileReport,
    ReconcileRequest,
)
from services.api.auth import WriteTenant
from services.api.common import now, transaction
from services.api.errors import responses
from services.common.web import RuntimeDep

router = APIRouter(tags=["operations"])


@router.post(
    "/tenants/{tenant}/assignment-requests",
    status_code=202,
    summary="Ask for an assignment action (as the AE webhooks do)",
    responses=responses(503),
)
async def request_assignment(
    tenant: WriteTenant, body: AssignmentRequest, runtime: RuntimeDep
) -> AssignmentAccepted:
    """Publishes the same `ae.prospect.assignment_requested` event an AE webhook would; the
    assigner applies it (rows A1–A8) and audits the decision. The answer carries the event id
    (the same `requestId` always gives the same one) and a preview of the decision on the
    current state, refusals included (`preview.refused`, with the reason)."""
    event = assignments.assignment_event(tenant, body, now())
    async with runtime.engine.connect() as conn:  # rolled back: the preview changes nothing
        preview = await assignments.preview_assignment(conn, event, event.received_at)
    return await assignments.publish_assignment(runtime.broker, event, preview)


@router.post("/tenants/{tenant}/reconcile", summary="Fix records whose owners disagree")
async def run_reconcile(
    tenant: WriteTenant, body: ReconcileRequest, runtime: RuntimeDep
) -> ReconcileReport:
    """Finds records whose AE owner is not what the connected users give for their SF owner
    (or whose SF owner is a queue AE is not on) and fixes them as S5/S6 would: the record is
    updated, the audit says `reconcile: …` and the AE change goes to the outbox. Records whose
    SF owner is not connected are counted, not changed. With `dryRun` nothing changes."""
    async with transaction(runtime) as conn:
        return await reconcile.reconcile(conn, tenant, dry_run=body.dry_run, now=now())
