"""User sync: connect AE users to SF users, as AE admins know it from Salesforce User Sync.

An AE user is matched by the SF user id AE knows for it, else by email (case-insensitive).
Only active users on both sides are connected; an SF user already connected to someone else,
or wanted by several AE users, is a conflict for a person to settle, never a guess.
`match_users` is the pure decision; `run_user_sync` loads, decides and writes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.schemas import UserSyncEntry, UserSyncOutcome, UserSyncReport
from services.admin.tenants import tenant_row
from services.common.db.tables import ae_users, connected_users, sf_users


@dataclass(frozen=True)
class AeUser:
    id: int
    email: str | None
    salesforce_user_id: str | None
    active: bool


@dataclass(frozen=True)
class SfUser:
    id: str
    email: str | None
    active: bool


def _email(value: str | None) -> str:
    return (value or "").strip().lower()


def match_users(
    ae: Iterable[AeUser], sf: Iterable[SfUser], mapped: Mapping[int, str]
) -> list[UserSyncEntry]:
    """One entry per AE user (by id): matched, already mapped, unmatched or conflicting."""
    sf_by_id = {u.id: u for u in sf}
    sf_by_email: dict[str, list[SfUser]] = defaultdict(list)
    for u in sf_by_id.values():
        if _email(u.email):
            sf_by_email[_email(u.email)].append(u)
    ae_of_sf = {s: a for a, s in mapped.items()}
    entries: dict[int, UserSyncEntry] = {}
    claims: dict[str, list[tuple[AeUser, Literal["sf_id", "email"]]]] = defaultdict(list)

    def report(
        user: AeUser, outcome: UserSyncOutcome, code: str, reason: str, sf_id: str | None
    ) -> None:
        entries[user.id] = UserSyncEntry(
            ae_user_id=user.id,
            ae_email=user.email,
            sf_user_id=sf_id,
            outcome=outcome,
            reason_code=code,
            reason=reason,
        )

    for user in sorted(ae, key=lambda u: u.id):
        if user.id in mapped:
            report(user, "already_mapped", "already_mapped", "already connected", mapped[user.id])
            continue
        if not user.active:
            report(user, "unmatched", "ae_user_inactive", "the AE user is inactive", None)
            continue
        how: Literal["sf_id", "email"]
        if user.salesforce_user_id:
            match = sf_by_id.get(user.salesforce_user_id)
            if match is None:
                report(
                    user,
                    "unmatched",
                    "sf_user_unknown",
                    f"AE knows this user as SF user {user.salesforce_user_id}, which is not "
                    "loaded in ownersync",
                    user.salesforce_user_id,
                )
                continue
            how = "sf_id"
        else:
            email = _email(user.email)
            if not email:
                report(user, "unmatched", "no_email", "no SF user id and no email to match", None)
                continue
            same_email = sf_by_email.get(email, [])
            active = [u for u in same_email if u.active]
            if not same_email:
                report(user, "unmatched", "no_sf_user_with_email", f"no SF user has {email}", None)
                continue
            if len(active) > 1:
                ids = ", ".join(sorted(u.id for u in active))
                report(
                    user,
                    "conflicting",
                    "email_ambiguous",
                    f"{len(active)} active SF users have {email}: {ids}",
                    None,
                )
                continue
            match = active[0] if active else min(same_email, key=lambda u: u.id)
            how = "email"
        if not match.active:
            report(
                user, "unmatched", "sf_user_inactive", f"SF user {match.id} is inactive", match.id
            )
            continue
        holder = ae_of_sf.get(match.id)
        if holder is not None:
            report(
                user,
                "conflicting",
                "sf_user_taken",
                f"SF user {match.id} is already connected to AE user {holder}",
                match.id,
            )
            continue
        claims[match.id].append((user, how))

    for sf_id, claimants in claims.items():
        by_id = [c for c in claimants if c[1] == "sf_id"]
        winner = claimants[0] if len(claimants) == 1 else by_id[0] if len(by_id) == 1 else None
        for user, how in claimants:
            if winner is not None and user is winner[0]:
                code = "by_sf_id" if how == "sf_id" else "by_email"
                reason = (
                    f"AE knows this user as SF user {sf_id}"
                    if how == "sf_id"
                    else f"same email as SF user {sf_id}"
                )
                report(user, "matched", code, reason, sf_id)
            elif winner is not None:
                report(
                    user,
                    "conflicting",
                    "email_reserved",
                    f"SF user {sf_id} has this email but belongs to AE user {winner[0].id} "
                    "(matched by SF user id)",
                    sf_id,
                )
            else:
                others = ", ".join(str(u.id) for u, _ in claimants)
                report(
                    user,
                    "conflicting",
                    "several_ae_users",
                    f"AE users {others} all match SF user {sf_id}",
                    sf_id,
                )
    return [entries[k] for k in sorted(entries)]


async def run_user_sync(
    conn: AsyncConnection, tenant_id: str, *, dry_run: bool, now: datetime
) -> UserSyncReport:
    await tenant_row(conn, tenant_id, lock=not dry_run)
    ae = [
        AeUser(r.id, r.email, r.salesforce_user_id, r.active)
        for r in await conn.execute(
            select(
                ae_users.c.id, ae_users.c.email, ae_users.c.salesforce_user_id, ae_users.c.active
            ).where(ae_users.c.tenant_id == tenant_id)
        )
    ]
    sf = [
        SfUser(r.id, r.email, r.active)
        for r in await conn.execute(
            select(sf_users.c.id, sf_users.c.email, sf_users.c.active).where(
                sf_users.c.tenant_id == tenant_id
            )
        )
    ]
    mapped = {
        r.ae_user_id: r.sf_user_id
        for r in await conn.execute(
            select(connected_users.c.ae_user_id, connected_users.c.sf_user_id).where(
                connected_users.c.tenant_id == tenant_id
            )
        )
    }
    entries = match_users(ae, sf, mapped)
    matched = [e for e in entries if e.outcome == "matched"]
    if matched and not dry_run:
        await conn.execute(
            insert(connected_users),
            [
                {
                    "tenant_id": tenant_id,
                    "ae_user_id": e.ae_user_id,
                    "sf_user_id": e.sf_user_id,
                    "created_at": now,
                }
                for e in matched
            ],
        )
    counts = Counter(e.outcome for e in entries)
    return UserSyncReport(
        dry_run=dry_run,
        counts={
            k: counts.get(k, 0) for k in ("matched", "already_mapped", "unmatched", "conflicting")
        },
        users=entries,
    )
