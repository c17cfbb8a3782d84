"""User sync's pure matching: by SF user id, else by email; conflicts are never guessed."""

from __future__ import annotations

from services.admin.schemas import UserSyncEntry
from services.admin.user_sync import AeUser, SfUser, match_users

A, B, C = "005000000000001AAA", "005000000000002AAA", "005000000000003AAA"


def _outcomes(entries: list[UserSyncEntry]) -> dict[int, tuple[str, str]]:
    return {e.ae_user_id: (e.outcome, e.reason_code) for e in entries}


def test_ae_user_is_matched_by_its_sf_user_id_before_its_email() -> None:
    entries = match_users(
        [AeUser(1, "b@x.io", A, True)],
        [SfUser(A, "a@x.io", True), SfUser(B, "b@x.io", True)],
        {},
    )
    assert [(e.outcome, e.reason_code, e.sf_user_id) for e in entries] == [
        ("matched", "by_sf_id", A)
    ]


def test_email_is_compared_without_case_or_surrounding_spaces() -> None:
    entries = match_users([AeUser(1, " Ann@X.IO ", None, True)], [SfUser(A, "ann@x.io", True)], {})
    assert _outcomes(entries) == {1: ("matched", "by_email")}


def test_inactive_users_on_either_side_are_not_mapped() -> None:
    entries = match_users(
        [AeUser(1, "a@x.io", None, True), AeUser(2, "b@x.io", None, False)],
        [SfUser(A, "a@x.io", False), SfUser(B, "b@x.io", True)],
        {},
    )
    assert _outcomes(entries) == {
        1: ("unmatched", "sf_user_inactive"),
        2: ("unmatched", "ae_user_inactive"),
    }


def test_an_inactive_namesake_does_not_make_an_email_ambiguous() -> None:
    entries = match_users(
        [AeUser(1, "a@x.io", None, True)],
        [SfUser(A, "a@x.io", False), SfUser(B, "A@x.io", True)],
        {},
    )
    assert [(e.outcome, e.sf_user_id) for e in entries] == [("matched", B)]


def test_email_shared_by_two_active_sf_users_is_a_conflict() -> None:
    entries = match_users(
        [AeUser(1, "a@x.io", None, True)],
        [SfUser(A, "a@x.io", True), SfUser(B, "A@X.io", True)],
        {},
    )
    assert _outcomes(entries) == {1: ("conflicting", "email_ambiguous")}


def test_sf_user_connected_to_someone_else_is_reserved() -> None:
    entries = match_users(
        [AeUser(1, "a@x.io", None, True), AeUser(2, None, None, True)],
        [SfUser(A, "a@x.io", True)],
        {2: A},
    )
    assert _outcomes(entries) == {
        1: ("conflicting", "sf_user_taken"),
        2: ("already_mapped", "already_mapped"),
    }


def test_sf_id_claim_wins_over_email_claims_and_email_claims_alone_all_lose() -> None:
    entries = match_users(
        [
            AeUser(1, "a@x.io", None, True),
            AeUser(2, None, A, True),
            AeUser(3, "c@x.io", None, True),
            AeUser(4, "C@x.io", None, True),
        ],
        [SfUser(A, "a@x.io", True), SfUser(C, "c@x.io", True)],
        {},
    )
    assert _outcomes(entries) == {
        1: ("conflicting", "email_reserved"),
        2: ("matched", "by_sf_id"),
        3: ("conflicting", "several_ae_users"),
        4: ("conflicting", "several_ae_users"),
    }


def test_unknown_sf_user_id_and_missing_email_are_unmatched() -> None:
    entries = match_users(
        [
            AeUser(1, "a@x.io", C, True),
            AeUser(2, None, None, True),
            AeUser(3, "z@x.io", None, True),
        ],
        [SfUser(A, "a@x.io", True)],
        {},
    )
    assert _outcomes(entries) == {
        1: ("unmatched", "sf_user_unknown"),
        2: ("unmatched", "no_email"),
        3: ("unmatched", "no_sf_user_with_email"),
    }
