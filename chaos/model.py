"""The checker's model: what SF and AE must hold once the traffic has been applied, whatever the
faults did, and the comparison with what they do hold.

Two kinds of record are played:

- *SF records*: a lead made in Salesforce, then reassigned there. Auto-create is on, so AE must
  hold exactly one prospect for it (by its email), linked to it, assigned to the AE user of the
  newest SF owner that is connected. When the newest notification names an unconnected user
  (S4: AE keeps its owner) the outcome depends on the order the notifications arrived in (a
  connected owner that arrives after a newer one is stale, S7), so any AE user named by one of
  its connected owners, or none, is accepted there. Every other record has exactly one answer.
- *AE prospects*: a prospect made in AE (assigned to an AE user) whose `prospect.created`
  webhook is played. SF must hold exactly one lead with its email, owned by the connected SF
  user (A1) or by the connector user (A2); AE must still hold that one prospect only, still
  assigned to its user.

- *SLA prospects*: an unassigned AE prospect assigned through round-robin group 7, whose
  follow-up SLA (short, no fallback) runs out again and again: nobody works it. SF must hold
  exactly one lead, owned by a connected member of the group, and AE the same owner (S5); its
  SLA clocks must have run exactly as the escalations allow: escalated, escalated, expired
  (each fired once, none left running), whatever was killed on the way.

Pure: no I/O. The runner feeds it the traffic it played and the simulators' final state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

EXAMPLES = 5  # ids kept per figure, to look at after a run


@dataclass(frozen=True)
class SfNote:
    """One SF outbound notification of a record: its owner as of `modstamp`."""

    owner: str
    modstamp: str  # ISO 8601 UTC, as SystemModstamp: orders like the time it names


@dataclass
class SfRecord:
    record_id: str
    email: str
    notes: list[SfNote] = field(default_factory=list)


@dataclass(frozen=True)
class AeProspect:
    prospect_id: int
    email: str
    assigned_user_id: int


@dataclass(frozen=True)
class SlaProspect:
    prospect_id: int
    email: str


# The clocks of a lead nobody works, with the default 2 escalations and no fallback.
SLA_CHAIN = ("escalated", "escalated", "expired")


@dataclass
class Figures:
    """What the checker counts; every one must be 0. `unlinked` and `unplanned_exits` are shown
    but do not fail a run on their own."""

    lost: int = 0  # the object the record must have is missing
    duplicated: int = 0  # records with more than one object where one is due
    wrong_owner: int = 0  # present, but owned by someone the model does not allow
    dead_lettered: int = 0  # parked broker messages + dead outbox effects
    stuck: int = 0  # queued messages + outbox effects not settled after the settle wait
    unlinked: int = 0  # an SF record's AE prospect does not name it (salesforceId)
    examples: dict[str, list[str]] = field(default_factory=dict)

    FAILING = ("lost", "duplicated", "wrong_owner", "dead_lettered", "stuck")

    @property
    def ok(self) -> bool:
        return all(getattr(self, name) == 0 for name in self.FAILING)

    def count(self, name: str, example: str) -> None:
        setattr(self, name, getattr(self, name) + 1)
        kept = self.examples.setdefault(name, [])
        if len(kept) < EXAMPLES:
            kept.append(example)

    def as_dict(self) -> dict[str, Any]:
        names = (*self.FAILING, "unlinked")
        return {**{name: getattr(self, name) for name in names}, "examples": self.examples}


@dataclass
class Model:
    """The expected owners. `ae_user_of` maps each connected SF user to its AE user."""

    ae_user_of: Mapping[str, int]
    connector: str
    sf_records: dict[str, SfRecord] = field(default_factory=dict)
    ae_prospects: dict[int, AeProspect] = field(default_factory=dict)
    sla_prospects: dict[int, SlaProspect] = field(default_factory=dict)
    group_sf_users: frozenset[str] = frozenset()  # the connected members of the SLA group

    # ---- what was played

    def sf_note(self, record_id: str, email: str, owner: str, modstamp: str) -> None:
        record = self.sf_records.setdefault(record_id, SfRecord(record_id, email))
        record.notes.append(SfNote(owner, modstamp))

    def ae_created(self, prospect_id: int, email: str, assigned_user_id: int) -> None:
        self.ae_prospects[prospect_id] = AeProspect(prospect_id, email, assigned_user_id)

    def sla_assigned(self, prospect_id: int, email: str) -> None:
        self.sla_prospects[prospect_id] = SlaProspect(prospect_id, email)

    # ---- what must come out

    def allowed_ae_owners(self, record_id: str) -> set[int | None]:
        """The AE assignees the record may end with (one, unless its newest owner is not
        connected: see the module's note)."""
        notes = self.sf_records[record_id].notes
        newest = max(notes, key=lambda n: n.modstamp)
        if newest.owner in self.ae_user_of:
            return {self.ae_user_of[newest.owner]}
        return {None} | {self.ae_user_of[n.owner] for n in notes if n.owner in self.ae_user_of}

    def expected_sf_owner(self, prospect_id: int) -> str:
        user = self.ae_prospects[prospect_id].assigned_user_id
        of_ae = {ae: sf for sf, ae in self.ae_user_of.items()}
        return of_ae.get(user, self.connector)  # A1, else A2: the connector's default

    # ---- the comparison

    def check(
        self, ae_prospects: Iterable[Mapping[str, Any]], sf_leads: Iterable[Mapping[str, Any]]
    ) -> Figures:
        """Count lost, duplicated, wrong-owner and unlinked records against the simulators'
        prospects (AE API shape) and leads (SF fields). Dead letters and stuck work are the
        runner's to add: they are not in the simulators."""
        prospects_by_email: dict[str, list[Mapping[str, Any]]] = {}
        for p in ae_prospects:
            prospects_by_email.setdefault(_key(p.get("email")), []).append(p)
        leads_by_email: dict[str, list[Mapping[str, Any]]] = {}
        for lead in sf_leads:
            leads_by_email.setdefault(_key(lead.get("Email")), []).append(lead)
        figures = Figures()
        for record in self.sf_records.values():
            self._check_sf_record(record, prospects_by_email.get(_key(record.email), []), figures)
        for prospect in self.ae_prospects.values():
            self._check_ae_prospect(
                prospect,
                prospects_by_email.get(_key(prospect.email), []),
                leads_by_email.get(_key(prospect.email), []),
                figures,
            )
        for sla in self.sla_prospects.values():
            self._check_sla_prospect(
                sla,
                prospects_by_email.get(_key(sla.email), []),
                leads_by_email.get(_key(sla.email), []),
                figures,
            )
        return figures

    def check_sla_clocks(self, chains: Mapping[int, Sequence[str]], figures: Figures) -> None:
        """Each SLA prospect's clocks (states, oldest first) against SLA_CHAIN: missing ones are
        lost, extra ones duplicated, open ones stuck."""
        for prospect_id in self.sla_prospects:
            chain = tuple(chains.get(prospect_id, ()))
            name = f"sla {prospect_id}: {' -> '.join(chain) or 'no clock'}"
            if chain == SLA_CHAIN:
                continue
            if any(state in ("pending", "running", "waiting") for state in chain):
                figures.count("stuck", name)
            elif len(chain) > len(SLA_CHAIN):
                figures.count("duplicated", name)
            else:
                figures.count("lost", name)

    def _check_sla_prospect(
        self,
        sla: SlaProspect,
        prospects: list[Mapping[str, Any]],
        leads: list[Mapping[str, Any]],
        figures: Figures,
    ) -> None:
        name = f"sla {sla.prospect_id}"
        if _counted_lost_or_duplicated(name, sla.prospect_id, prospects, leads, figures):
            return
        owner = leads[0].get("OwnerId")
        ae_user = _ae_user(sla.prospect_id, prospects)
        if owner not in self.group_sf_users or ae_user != self.ae_user_of.get(str(owner)):
            figures.count(
                "wrong_owner",
                f"{name}: SF owner {owner} (a member of the group expected), AE user {ae_user}",
            )

    def _check_sf_record(
        self, record: SfRecord, prospects: list[Mapping[str, Any]], figures: Figures
    ) -> None:
        name = f"sf {record.record_id}"
        if not prospects:
            figures.count("lost", f"{name}: no AE prospect")
            return
        if len(prospects) > 1:
            figures.count("duplicated", f"{name}: {len(prospects)} AE prospects")
        first = min(prospects, key=lambda p: p["id"])
        allowed = self.allowed_ae_owners(record.record_id)
        if first.get("assignedUserId") not in allowed:
            figures.count(
                "wrong_owner",
                f"{name}: AE user {first.get('assignedUserId')}, expected one of "
                f"{sorted(allowed, key=str)}",
            )
        if first.get("salesforceId") != record.record_id:
            figures.count(
                "unlinked", f"{name}: prospect {first['id']} -> {first.get('salesforceId')}"
            )

    def _check_ae_prospect(
        self,
        prospect: AeProspect,
        prospects: list[Mapping[str, Any]],
        leads: list[Mapping[str, Any]],
        figures: Figures,
    ) -> None:
        name = f"ae {prospect.prospect_id}"
        if _counted_lost_or_duplicated(name, prospect.prospect_id, prospects, leads, figures):
            return
        lead = min(leads, key=lambda lead: str(lead.get("CreatedDate") or "") + str(lead["Id"]))
        expected = self.expected_sf_owner(prospect.prospect_id)
        ae_user = _ae_user(prospect.prospect_id, prospects)
        if lead.get("OwnerId") != expected or ae_user != prospect.assigned_user_id:
            figures.count(
                "wrong_owner",
                f"{name}: SF owner {lead.get('OwnerId')} (expected {expected}), AE user "
                f"{ae_user} (expected {prospect.assigned_user_id})",
            )


def _counted_lost_or_duplicated(
    name: str,
    prospect_id: int,
    prospects: list[Mapping[str, Any]],
    leads: list[Mapping[str, Any]],
    figures: Figures,
) -> bool:
    """A prospect made in AE must come out as one SF lead and no other AE prospect by its email:
    none is lost (True, nothing more to check), more are duplicated."""
    if not leads:
        figures.count("lost", f"{name}: no SF lead")
        return True
    others = [p for p in prospects if p["id"] != prospect_id]
    if len(leads) > 1 or others:
        figures.count(
            "duplicated", f"{name}: {len(leads)} SF leads, {len(others)} other AE prospects"
        )
    return False


def _ae_user(prospect_id: int, prospects: list[Mapping[str, Any]]) -> Any:
    """The AE user the prospect itself is assigned to, None if it is gone."""
    mine = [p for p in prospects if p["id"] == prospect_id]
    return mine[0].get("assignedUserId") if mine else None


def _key(email: object) -> str:
    return str(email or "").strip().lower()
