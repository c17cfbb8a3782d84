"""The load: SF outbound messages of 100 notifications, built like Salesforce's, and their posting.

Messages are built ahead of time with `services.sim.sf.build_outbound_message` (the SOAP
body the SF simulator sends, byte for byte like the fixtures), so building costs nothing while
the clock runs. Two ways to post: as fast as the receiver acks (a few concurrent clients, each
with one keep-alive connection) and paced at a fixed offered rate on a monotonic clock (open
loop: a slow answer does not delay the next send).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from services.admin.tenant_file import TenantFile
from services.common.endpoints import SfAction, sf_outbound_url
from services.common.messages import event_id_for
from services.common.sfid import SERIAL_DIGITS, to18
from services.sim.sf import OutboundNotification, build_outbound_message, format_sf_datetime

NOTIFICATIONS_PER_MESSAGE = 100


@dataclass(frozen=True)
class Fixture:
    """What the load needs from the tenant file: org, users, outbound-message actions."""

    tenant: str
    org_id: str
    alice: str
    bob: str
    carol: str
    dave: str
    created_action: str
    reassigned_action: str
    ae_user_of: dict[str, int]
    endpoint_key: str | None
    webhook_secret: str

    @classmethod
    def read(cls, path: Path) -> Fixture:
        data = TenantFile.read(path)  # validated, ids in their 18-character form
        users = data.salesforce_users
        actions = data.outbound_message_actions
        return cls(
            tenant=data.tenant,
            org_id=data.salesforce_org_id,
            alice=users["alice"],
            bob=users["bob"],
            carol=users["carol_unconnected"],
            dave=users["dave_unconnected"],
            created_action=actions.get("record-created", to18("04k5g0000o5gLzdAAE")),
            reassigned_action=actions.get("record-reassigned", to18("04k5g0000ECR19BAQT")),
            ae_user_of={c.salesforce_user: c.engagement_user for c in data.connected_users},
            endpoint_key=data.salesforce_endpoint_key,
            webhook_secret=str(data.webhook_secret),
        )

    @property
    def connected(self) -> tuple[str, str]:
        return (self.alice, self.bob)

    @property
    def unconnected(self) -> tuple[str, str]:
        return (self.carol, self.dave)


@dataclass
class Message:
    kind: str  # "created" | "reassigned"
    path: str
    body: bytes
    notification_ids: tuple[str, ...]
    duplicate: bool = False
    stale: int = 0  # notifications in it with an older SystemModstamp than already sent
    owners: tuple[tuple[str, str], ...] = ()  # (SF record, owner) it sets, stale ones left out

    @property
    def size(self) -> int:
        return len(self.notification_ids)


@dataclass
class _Record:
    id: str
    email: str
    owner: str
    created: datetime
    modstamp: datetime  # the newest SystemModstamp sent for it
    last_message: int  # index of the message that carried it last


@dataclass
class Workload:
    """Generates records and notifications with increasing SystemModstamps."""

    fixture: Fixture
    seed: int = 1
    rng: random.Random = field(init=False)
    clock: datetime = field(init=False)
    pool: list[_Record] = field(default_factory=list)  # records the mixed load may reassign
    # SF serials grow with time: the run's ids come after those of `--preload` (whose 9 digits
    # are decimal, so below 62**8), as a tenant's new notifications come after its old ones.
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(62**8))
    _salt: str = field(init=False)
    _next_index: int = 0  # messages are numbered across workloads, for the reassignment lag

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        # SystemModstamps start in the past and advance 1 ms per notification.
        self.clock = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
        self._salt = "".join(self.rng.choice(SERIAL_DIGITS) for _ in range(3))

    # ---- ids, times, one notification

    def _sf_id(self, prefix: str) -> str:
        n = next(self._ids)
        digits = []
        for _ in range(9):
            n, d = divmod(n, 62)
            digits.append(SERIAL_DIGITS[d])
        return to18(prefix + self._salt + "".join(reversed(digits)))  # 3 + 3 + 9 = 15

    def tick(self, ms: int = 1) -> datetime:
        self.clock += timedelta(milliseconds=ms)
        return self.clock

    def new_record(self, owner: str, index: int) -> _Record:
        record_id = self._sf_id("00Q")
        stamp = self.tick()
        return _Record(
            record_id, f"{record_id.lower()}@bench.example.com", owner, stamp, stamp, index
        )

    def _notification(
        self, record: _Record, owner: str, modstamp: datetime
    ) -> OutboundNotification:
        fields = (
            ("Id", record.id),
            ("Email", record.email),
            ("OwnerId", owner),
            ("SystemModstamp", format_sf_datetime(modstamp)),
            ("CreatedDate", format_sf_datetime(record.created)),
        )
        return OutboundNotification(self._sf_id("04l"), "Lead", fields, 0)

    def _message(
        self,
        kind: str,
        notes: Sequence[OutboundNotification],
        stale: int = 0,
        owners: Sequence[tuple[str, str]] = (),
    ) -> Message:
        f = self.fixture
        org15 = f.org_id[:15]
        body = build_outbound_message(
            organization_id=f.org_id,
            action_id=f.created_action if kind == "created" else f.reassigned_action,
            enterprise_url=f"https://bench.my.salesforce.com/services/Soap/c/62.0/{org15}",
            partner_url=f"https://bench.my.salesforce.com/services/Soap/u/62.0/{org15}",
            notifications=notes,
        )
        action: SfAction = "record-created" if kind == "created" else "record-reassigned"
        path = sf_outbound_url("", f.tenant, action, f.endpoint_key)
        ids = tuple(n.notification_id for n in notes)
        return Message(kind, path, body, ids, stale=stale, owners=tuple(owners))

    # ---- message kinds

    def created_message(self, index: int, size: int, owners: Sequence[str]) -> Message:
        records = [self.new_record(self.rng.choice(owners), index) for _ in range(size)]
        self.pool.extend(records)
        notes = [self._notification(r, r.owner, r.created) for r in records]
        return self._message("created", notes, owners=[(r.id, r.owner) for r in records])

    def _new_owner(self, current: str) -> str:
        f = self.fixture
        if self.rng.random() < 0.8:  # mostly to a connected user: an AE change (S5)
            return (
                f.bob
                if current == f.alice
                else f.alice
                if current == f.bob
                else (self.rng.choice(f.connected))
            )
        return f.dave if current == f.carol else f.carol  # S4: AE keeps its owner

    def _eligible(self, index: int, lag: int, taken: set[str]) -> _Record:
        """A record whose last notification went out at least `lag` messages ago."""
        for _ in range(50):
            record = self.rng.choice(self.pool)
            if record.last_message <= index - lag and record.id not in taken:
                return record
        for record in self.pool:  # the pool is in creation order: the oldest are eligible
            if record.last_message <= index - lag and record.id not in taken:
                return record
        raise RuntimeError("no record old enough to reassign: more created messages needed")

    def reassigned_message(self, index: int, size: int, stale: int, lag: int) -> Message:
        taken: set[str] = set()
        notes: list[OutboundNotification] = []
        owners: list[tuple[str, str]] = []
        for position in range(size):
            record = self._eligible(index, lag, taken)
            taken.add(record.id)
            if position < stale:
                # Older than what was already sent (and, `lag` messages later, applied): S7.
                older = record.modstamp - timedelta(milliseconds=self.rng.randint(1, 5000))
                owner = self._new_owner(record.owner)
                notes.append(self._notification(record, owner, older))
                continue
            record.owner = self._new_owner(record.owner)
            record.modstamp = self.tick()
            record.last_message = index
            owners.append((record.id, record.owner))
            notes.append(self._notification(record, record.owner, record.modstamp))
        self.rng.shuffle(notes)
        return self._message("reassigned", notes, stale, owners)

    # ---- the two workloads

    def mixed(
        self,
        notifications: int,
        *,
        created_share: float = 0.70,
        duplicate_share: float = 0.05,
        stale_share: float = 0.03,
    ) -> list[Message]:
        """~70% created, the rest reassigned (of records created earlier, some of them with an
        older SystemModstamp: stale), ~5% of the messages posted again (duplicates)."""
        size = NOTIFICATIONS_PER_MESSAGE
        total = max(1, round(notifications / size))
        duplicates = round(total * duplicate_share) if total >= 4 else 0
        created = max(1, round(total * created_share))
        reassigned = max(0, total - created - duplicates)
        unique = created + reassigned
        lag = max(1, min(20, created // 4))
        if not self.pool:  # a fresh workload starts with `lag` messages of new records
            reassigned = min(reassigned, unique - lag)
            created = unique - reassigned
        stale_total = min(round(total * size * stale_share), reassigned * size // 2)
        # Evenly spread: reassigned messages among the created ones after the first `lag`.
        rest = unique - lag
        slots = {lag + int((k + 0.5) * rest / reassigned) for k in range(reassigned)}
        messages: list[Message] = []
        r_seen = 0
        base = self._next_index
        self._next_index += unique + lag
        owners = (self.fixture.alice, self.fixture.bob, self.fixture.carol)
        for i in range(unique):
            if i in slots:
                stale = (
                    stale_total * (r_seen + 1) // reassigned - stale_total * r_seen // reassigned
                )
                r_seen += 1
                messages.append(self.reassigned_message(base + i, size, stale, lag))
            else:
                messages.append(self.created_message(base + i, size, owners))
        # Duplicates: an earlier message posted again (SF retries, sometimes twice).
        positions = [lag + int((k + 0.5) * rest / duplicates) for k in range(duplicates)]
        for position in sorted(positions, reverse=True):
            original = messages[self.rng.randint(max(0, position - 30), max(0, position - 1))]
            copy = Message(
                original.kind,
                original.path,
                original.body,
                original.notification_ids,
                True,
                owners=original.owners,
            )
            messages.insert(position + 1, copy)
        return messages

    def reassign_rounds(
        self, records: int, times: int, *, within: timedelta = timedelta(minutes=1)
    ) -> tuple[list[Message], list[Message], dict[str, str]]:
        """`records` new records owned by alice, then each reassigned `times` times between
        bob and alice, SystemModstamps `within / (times + 1)` apart (all inside one minute).

        Returns (messages creating them, messages reassigning them round by round, the
        final SF owner of each record)."""
        f = self.fixture
        size = NOTIFICATIONS_PER_MESSAGE
        start = self.tick()
        made = [self.new_record(f.alice, 0) for _ in range(records)]
        for record in made:  # one creation time for the phase: the rounds follow it
            record.created = record.modstamp = start
        create_notes = [self._notification(r, r.owner, r.created) for r in made]
        step = within / (times + 1)
        reassign_notes: list[OutboundNotification] = []
        moves: list[tuple[str, str]] = []
        for round_no in range(1, times + 1):
            stamp = start + step * round_no
            for record in made:
                record.owner = f.bob if record.owner == f.alice else f.alice
                record.modstamp = stamp
                reassign_notes.append(self._notification(record, record.owner, stamp))
                moves.append((record.id, record.owner))
        self.clock = max(self.clock, start + within) + timedelta(seconds=1)
        creates = [
            self._message("created", create_notes[i : i + size])
            for i in range(0, len(create_notes), size)
        ]
        reassigns = [
            self._message("reassigned", reassign_notes[i : i + size], owners=moves[i : i + size])
            for i in range(0, len(reassign_notes), size)
        ]
        return creates, reassigns, {r.id: r.owner for r in made}


def unique_notifications(messages: Sequence[Message]) -> int:
    return sum(m.size for m in messages if not m.duplicate)


def event_ids(tenant: str, messages: Sequence[Message]) -> dict[str, str]:
    """The inbox event id of every notification id (first posts only)."""
    return {
        n: str(event_id_for(tenant, "sf", n))
        for m in messages
        if not m.duplicate
        for n in m.notification_ids
    }


# --- posting -------------------------------------------------------------------------------


@dataclass
class Posted:
    message: Message
    sent_at: float  # monotonic
    sent_wall: float  # time.time(), to compare with database timestamps
    acked_at: float | None = None  # monotonic; None when never acked
    attempts: int = 0
    late: float = 0.0  # how far behind its schedule it was sent (paced posting)
    last_status: int | None = None


@dataclass
class PostRun:
    posted: list[Posted]
    first_sent: float
    last_acked: float

    @property
    def failed(self) -> int:
        return sum(1 for p in self.posted if p.acked_at is None)

    @property
    def retries(self) -> int:
        return sum(max(0, p.attempts - 1) for p in self.posted)


SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}


async def _post(client: httpx.AsyncClient, item: Posted, *, attempts: int = 6) -> None:
    """Post until acked, as Salesforce would (it retries what is not acked)."""
    for attempt in range(1, attempts + 1):
        item.attempts = attempt
        try:
            answer = await client.post(
                item.message.path, content=item.message.body, headers=SOAP_HEADERS
            )
            item.last_status = answer.status_code
            if answer.status_code == 200 and b"<Ack>true</Ack>" in answer.content:
                item.acked_at = time.monotonic()
                return
        except httpx.HTTPError:
            item.last_status = None
        await asyncio.sleep(0.2 * attempt)


async def post_fast(base_url: str, messages: Sequence[Message], concurrency: int) -> PostRun:
    """Closed loop: `concurrency` clients, each posting its next message once acked."""
    queue = list(reversed(messages))
    posted: list[Posted] = []
    timeout = httpx.Timeout(60.0, connect=10.0)

    async def client_loop() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
            while queue:
                item = Posted(queue.pop(), time.monotonic(), time.time())
                posted.append(item)
                await _post(client, item)

    await asyncio.gather(*(client_loop() for _ in range(max(1, concurrency))))
    acked = [p.acked_at for p in posted if p.acked_at is not None]
    return PostRun(posted, min(p.sent_at for p in posted), max(acked, default=time.monotonic()))


async def post_paced(base_url: str, messages: Sequence[Message], per_second: float) -> PostRun:
    """Open loop: message i is sent at start + i / per_second, whatever the answers do."""
    interval = 1.0 / per_second
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    posted: list[Posted] = []
    async with httpx.AsyncClient(
        base_url=base_url, timeout=httpx.Timeout(60.0, connect=10.0), limits=limits
    ) as client:
        # One warm connection, so the first send does not pay the TCP handshake.
        await client.get("/healthz")
        tasks = []
        start = time.monotonic() + 0.05
        for index, message in enumerate(messages):
            due = start + index * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            item = Posted(message, now, time.time(), late=max(0.0, now - due))
            posted.append(item)
            tasks.append(asyncio.create_task(_post(client, item)))
        await asyncio.gather(*tasks)
    acked = [p.acked_at for p in posted if p.acked_at is not None]
    return PostRun(posted, posted[0].sent_at, max(acked, default=time.monotonic()))


def last_moves(posted: Sequence[Posted]) -> dict[str, tuple[float, str]]:
    """Per SF record, the send time (epoch) and owner of the last notification that moved it
    (first posts only: a duplicate moves nothing)."""
    last: dict[str, tuple[float, str]] = {}
    for p in sorted(posted, key=lambda p: p.sent_wall):
        if not p.message.duplicate:
            for record, owner in p.message.owners:
                last[record] = (p.sent_wall, owner)
    return last
