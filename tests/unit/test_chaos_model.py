"""The chaos checker's model: the owners it expects, and what it counts against the simulators."""

from __future__ import annotations

from typing import Any

from chaos.model import Figures, Model
from chaos.run import TENANT_FILE, _unsettled
from chaos.traffic import Shape, build

ALICE, BOB, CAROL = "005A", "005B", "005C"  # CAROL is not connected
CONNECTOR = "005Z"
AE_ALICE, AE_BOB, AE_ERIN = 101, 102, 105  # ERIN is not connected


def model() -> Model:
    return Model(ae_user_of={ALICE: AE_ALICE, BOB: AE_BOB}, connector=CONNECTOR)


def stamp(second: int) -> str:
    return f"2026-12-01T10:00:{second:02d}.000Z"


def prospect(pid: int, email: str, user: int | None, sf_id: str | None = None) -> dict[str, Any]:
    return {"id": pid, "email": email, "assignedUserId": user, "salesforceId": sf_id}


def lead(lead_id: str, email: str, owner: str, created: str = "") -> dict[str, Any]:
    return {"Id": lead_id, "Email": email, "OwnerId": owner, "CreatedDate": created}


# ---- SF records: one AE prospect each, assigned as the newest connected owner says


def test_an_sf_record_whose_newest_owner_is_connected_has_exactly_that_owner() -> None:
    m = model()
    m.sf_note("00Q1", "a@x.com", CAROL, stamp(1))  # created unconnected: S1, unassigned
    m.sf_note("00Q1", "a@x.com", BOB, stamp(3))  # newest: S5
    m.sf_note("00Q1", "a@x.com", ALICE, stamp(2))  # posted last, but older: stale (S7)
    assert m.allowed_ae_owners("00Q1") == {AE_BOB}
    right = m.check([prospect(5001, "a@x.com", AE_BOB, "00Q1")], [])
    assert right.as_dict() | {"examples": {}} == Figures().as_dict()
    wrong = m.check([prospect(5001, "a@x.com", AE_ALICE, "00Q1")], [])
    assert (wrong.wrong_owner, wrong.lost, wrong.duplicated) == (1, 0, 0)
    assert "expected one of [102]" in wrong.examples["wrong_owner"][0]


def test_when_the_newest_owner_is_unconnected_the_order_of_arrival_decides_among_the_rest() -> None:
    m = model()
    m.sf_note("00Q2", "b@x.com", CAROL, stamp(1))
    m.sf_note("00Q2", "b@x.com", ALICE, stamp(2))
    m.sf_note("00Q2", "b@x.com", CAROL, stamp(3))  # S4: AE keeps whatever it had
    assert m.allowed_ae_owners("00Q2") == {None, AE_ALICE}
    assert m.check([prospect(1, "b@x.com", None, "00Q2")], []).ok
    assert m.check([prospect(1, "b@x.com", AE_ALICE, "00Q2")], []).ok
    assert m.check([prospect(1, "b@x.com", AE_BOB, "00Q2")], []).wrong_owner == 1


def test_a_missing_prospect_is_lost_and_a_second_one_is_a_duplicate() -> None:
    m = model()
    m.sf_note("00Q3", "c@x.com", ALICE, stamp(1))
    lost = m.check([prospect(1, "other@x.com", AE_ALICE)], [])
    assert (lost.lost, lost.duplicated, lost.wrong_owner, lost.ok) == (1, 0, 0, False)
    twice = m.check(
        [prospect(7, "C@X.com", AE_ALICE, "00Q3"), prospect(9, "c@x.com", AE_ALICE, "00Q3")], []
    )
    assert (twice.lost, twice.duplicated, twice.wrong_owner) == (0, 1, 0)  # email: any case


def test_the_oldest_of_duplicates_is_the_one_whose_owner_and_link_are_judged() -> None:
    m = model()
    m.sf_note("00Q4", "d@x.com", ALICE, stamp(1))
    figures = m.check(
        [prospect(9, "d@x.com", AE_ALICE, "00Q4"), prospect(3, "d@x.com", AE_BOB, None)], []
    )
    assert (figures.duplicated, figures.wrong_owner, figures.unlinked) == (1, 1, 1)


# ---- AE prospects: one SF lead each, owned by the connected user or the connector


def test_an_ae_prospect_gets_one_lead_owned_by_its_users_sf_user_or_the_connector() -> None:
    m = model()
    m.ae_created(700, "e@x.com", AE_BOB)  # A1
    m.ae_created(701, "f@x.com", AE_ERIN)  # A2: the connector's default assignment
    assert m.expected_sf_owner(700) == BOB
    assert m.expected_sf_owner(701) == CONNECTOR
    ae = [prospect(700, "e@x.com", AE_BOB, "00QE"), prospect(701, "f@x.com", AE_ERIN, "00QF")]
    sf = [lead("00QE", "e@x.com", BOB), lead("00QF", "f@x.com", CONNECTOR)]
    figures = m.check(ae, sf)
    assert figures.ok
    bad = m.check(ae, [lead("00QE", "e@x.com", ALICE), lead("00QF", "f@x.com", BOB)])
    assert bad.wrong_owner == 2


def test_an_ae_prospect_without_a_lead_is_lost_and_extra_leads_or_prospects_are_duplicates() -> (
    None
):
    m = model()
    m.ae_created(700, "e@x.com", AE_ALICE)
    assert m.check([prospect(700, "e@x.com", AE_ALICE)], []).lost == 1
    two_leads = m.check(
        [prospect(700, "e@x.com", AE_ALICE, "00Q1")],
        [lead("00Q1", "e@x.com", ALICE, "1"), lead("00Q2", "e@x.com", ALICE, "2")],
    )
    assert (two_leads.duplicated, two_leads.wrong_owner) == (1, 0)
    second_prospect = m.check(
        [prospect(700, "e@x.com", AE_ALICE, "00Q1"), prospect(5001, "e@x.com", None, "00Q1")],
        [lead("00Q1", "e@x.com", ALICE)],
    )
    assert second_prospect.duplicated == 1


def test_an_ae_prospect_whose_ae_owner_changed_is_wrong_even_with_the_right_lead() -> None:
    m = model()
    m.ae_created(700, "e@x.com", AE_ALICE)
    moved = m.check([prospect(700, "e@x.com", AE_BOB, "00Q1")], [lead("00Q1", "e@x.com", ALICE)])
    assert moved.wrong_owner == 1


# ---- the figures


def test_unlinked_is_shown_but_does_not_fail_a_run_and_every_other_count_does() -> None:
    assert Figures(unlinked=3).ok
    for name in Figures.FAILING:
        figures = Figures()
        figures.count(name, "x")
        assert not figures.ok, name
        assert figures.as_dict()[name] == 1


def test_examples_are_kept_for_the_first_few_only() -> None:
    figures = Figures()
    for n in range(9):
        figures.count("lost", f"record {n}")
    assert figures.lost == 9
    assert figures.examples["lost"] == [f"record {n}" for n in range(5)]


# ---- the traffic feeds the model with everything it plays


def test_the_traffic_is_the_same_for_a_seed_and_every_notification_is_in_the_model() -> None:
    shape = Shape(
        sf_records=60, sf_reassign_messages=5, ae_prospects=10, bursts=2, burst_records=150
    )
    one, again, other = (build(TENANT_FILE, shape, seed) for seed in (3, 3, 4))
    assert [s.event_ids for s in one.sends] == [s.event_ids for s in again.sends]
    assert list(one.model.sf_records) == list(again.model.sf_records)
    assert [s.event_ids for s in one.sends] != [s.event_ids for s in other.sends]
    # 60 + 2 x 150 SF records, 10 AE prospects; 5 reassignments of 10 notifications each.
    assert len(one.model.sf_records) == 360
    assert len(one.model.ae_prospects) == 10
    notes = sum(len(r.notes) for r in one.model.sf_records.values())
    assert notes == 360 + 5 * 10
    assert len(one.unique_event_ids) == notes + 10
    assert [len(group) for group in one.bursts] == [2, 2]  # messages of 100 and 50
    duplicates = [s for s in one.sends if s.duplicate]
    assert duplicates and all(
        any(o.event_ids == d.event_ids and not o.duplicate for o in one.sends) for d in duplicates
    )
    # Every AE webhook names a prospect seeded into the AE simulator beforehand.
    assert {p["id"] for p in one.seeded_prospects} == set(one.model.ae_prospects)


def test_stuck_counts_queued_work_and_every_effect_not_yet_settled() -> None:
    depths = {"syncer": 2, "assigner": 1, "retry": 3, "dead-letters": 40}
    outbox = {"done": 900, "superseded": 9, "dead": 4, "pending": 5, "sending": 200}
    assert _unsettled(depths, outbox) == 2 + 1 + 3 + 5 + 200  # parked and dead count elsewhere
    assert _unsettled({"syncer": 0, "dead-letters": 7}, {"done": 1, "dead": 2}) == 0


# ---- SLA prospects: moved by their SLA, each clock fired once


def sla_model() -> Model:
    m = model()
    m.group_sf_users = frozenset({ALICE, BOB})
    m.sla_assigned(800_000, "s@x.com")
    return m


def test_an_sla_prospect_ends_with_a_group_member_in_sf_and_the_same_owner_in_ae() -> None:
    m = sla_model()
    assert m.check([prospect(800_000, "s@x.com", AE_BOB)], [lead("00QS", "s@x.com", BOB)]).ok
    wrong = m.check([prospect(800_000, "s@x.com", AE_ALICE)], [lead("00QS", "s@x.com", BOB)])
    assert wrong.wrong_owner == 1
    outside = m.check([prospect(800_000, "s@x.com", None)], [lead("00QS", "s@x.com", CAROL)])
    assert outside.wrong_owner == 1
    assert m.check([prospect(800_000, "s@x.com", AE_BOB)], []).lost == 1


def test_sla_clocks_must_run_escalated_escalated_expired_once_each() -> None:
    m = sla_model()
    chains = {
        "ok": ["escalated", "escalated", "expired"],
        "stuck": ["escalated", "running"],
        "lost": ["escalated", "expired"],
        "duplicated": ["escalated", "escalated", "escalated", "expired"],
    }
    for expected, chain in chains.items():
        figures = Figures()
        m.check_sla_clocks({800_000: chain}, figures)
        counted = {
            n: getattr(figures, n) for n in ("lost", "duplicated", "stuck") if getattr(figures, n)
        }
        assert counted == ({} if expected == "ok" else {expected: 1}), expected
    none = Figures()
    m.check_sla_clocks({}, none)
    assert none.lost == 1


def test_sla_traffic_assigns_unassigned_prospects_through_group_7() -> None:
    shape = Shape(sf_records=0, sf_reassign_messages=0, ae_prospects=0, sla_prospects=3)
    traffic = build(TENANT_FILE, shape, 5)
    assert len(traffic.model.sla_prospects) == 3 and len(traffic.sends) >= 3
    assert traffic.model.group_sf_users  # alice and bob, connected members of group 7
    assert all(p["assignedUserId"] is None for p in traffic.seeded_prospects)
    assert all(b'"assign_to_group"' in s.body for s in traffic.sends)
