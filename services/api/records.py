"""/v1/tenants/{tenant}/records: a record's state and its audit timeline."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from services.admin import records
from services.admin.pagination import Page
from services.admin.schemas import AuditEntry, RecordView
from services.api.auth import ReadTenant
from services.api.common import Paging, ProspectPath, SfRecordPath, paging, transaction
from services.common.web import RuntimeDep

router = APIRouter(tags=["records"])
Pages = Annotated[Paging, Depends(paging)]


@router.get("/tenants/{tenant}/records/prospect/{prospect_id}", summary="A record by prospect id")
async def record_by_prospect(
    tenant: ReadTenant, prospect_id: ProspectPath, runtime: RuntimeDep
) -> RecordView:
    async with transaction(runtime) as conn:
        return await records.get_record(conn, tenant, "prospect", prospect_id)


@router.get(
    "/tenants/{tenant}/records/prospect/{prospect_id}/audit",
    summary="Why is this prospect owned by whom: every decision, oldest first",
)
async def audit_by_prospect(
    tenant: ReadTenant, prospect_id: ProspectPath, runtime: RuntimeDep, page: Pages
) -> Page[AuditEntry]:
    async with transaction(runtime) as conn:
        return await records.record_audit(
            conn, tenant, "prospect", prospect_id, limit=page.limit, cursor=page.cursor
        )


@router.get("/tenants/{tenant}/records/sf/{sf_record_id}", summary="A record by SF lead/contact id")
async def record_by_sf_id(
    tenant: ReadTenant, sf_record_id: SfRecordPath, runtime: RuntimeDep
) -> RecordView:
    async with transaction(runtime) as conn:
        return await records.get_record(conn, tenant, "sf", sf_record_id)


@router.get(
    "/tenants/{tenant}/records/sf/{sf_record_id}/audit",
    summary="Why is this SF record's prospect owned by whom: every decision, oldest first",
)
async def audit_by_sf_id(
    tenant: ReadTenant, sf_record_id: SfRecordPath, runtime: RuntimeDep, page: Pages
) -> Page[AuditEntry]:
    async with transaction(runtime) as conn:
        return await records.record_audit(
            conn, tenant, "sf", sf_record_id, limit=page.limit, cursor=page.cursor
        )
