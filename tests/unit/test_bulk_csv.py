"""Bulk mode's CSV: the import file it builds, the error file it reads back, and which records
an import may carry (owner updates of existing prospects to a user, never an un-assign), and
when a tenant's backlog goes by import."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace
from typing import cast

from services.common.ae_client import AeImport
from services.common.domain import RecordState
from services.relay.bulk import BulkMode, bulk_eligible, failed_rows, owners_csv
from services.relay.relay import Relay


def test_the_import_file_has_the_match_column_and_the_owner_one_row_per_prospect() -> None:
    text = owners_csv([(5001, 101), (5002, 102)])

    assert text == "matchId,assignedUserId\n5001,101\n5002,102\n"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows == [
        {"matchId": "5001", "assignedUserId": "101"},
        {"matchId": "5002", "assignedUserId": "102"},
    ]


def test_the_error_file_gives_each_failed_prospect_its_error_whatever_the_column_name() -> None:
    errors = (
        "matchId,assignedUserId,Error Message\n"
        '5001,101,"User not found, assignedUserId 101"\n'
        "5003,999,No matching prospect found\n"
        "\n"
    )

    failed, unknown = failed_rows(errors)

    assert failed == {
        5001: "User not found, assignedUserId 101",
        5003: "No matching prospect found",
    }
    assert unknown == 0


def test_error_rows_that_name_no_prospect_are_counted_so_the_import_counts_as_failed() -> None:
    failed, unknown = failed_rows("matchId,assignedUserId,error\n,101,Only one match column\n")

    assert failed == {}
    assert unknown == 1


def test_an_empty_error_file_fails_nothing() -> None:
    assert failed_rows("") == ({}, 0)
    assert failed_rows("matchId,assignedUserId,error\n") == ({}, 0)


def test_only_owner_updates_of_existing_prospects_to_a_user_may_go_by_import() -> None:
    owner_change = RecordState(id=1, prospect_id=5001, ae_assigned_user_id=101)
    create = RecordState(id=2, prospect_id=None, ae_assigned_user_id=101)
    unassign = RecordState(id=3, prospect_id=5003, ae_assigned_user_id=None)
    to_queue = RecordState(id=4, prospect_id=5004, ae_assigned_queue_id="00G5g000004C2kmEAC")

    assert bulk_eligible(owner_change)
    assert not bulk_eligible(create)
    assert not bulk_eligible(unassign)  # "Un-assigning prospects is NOT supported through Import"
    assert not bulk_eligible(to_queue)


def test_an_import_runs_until_complete_or_ended_otherwise() -> None:
    states = {
        status: AeImport.model_validate({"id": 1, "status": status})
        for status in ("Open", "Waiting", "Processing", "Complete", "Failed")
    }

    assert [s for s, i in states.items() if i.running] == ["Open", "Waiting", "Processing"]
    assert [s for s, i in states.items() if i.complete] == ["Complete"]
    expired = AeImport.model_validate({"id": 1, "status": "Open", "isExpired": True})
    assert not expired.running and not expired.complete


async def test_a_tenant_in_bulk_mode_stays_in_it_down_to_a_tenth_of_the_threshold() -> None:
    async def no_client(_: str) -> None:
        return None

    bulk = BulkMode(cast(Relay, SimpleNamespace()), no_client, threshold=1000)

    assert not bulk._due("acme", 1000)  # above the threshold, not at it
    assert bulk._due("acme", 1001)
    bulk.busy = {"acme"}  # its backlog went by import on the last pass
    assert bulk._due("acme", 101) and not bulk._due("acme", 100)
    assert not bulk._due("other", 500)
