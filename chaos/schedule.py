"""The fault schedules: what breaks when, in seconds from the start of the traffic.

Outages of the shared Postgres and RabbitMQ are played on this run's fault proxies
(`services.sim.netfault`), never on the services themselves: `cut` stands for a stopped server
(RabbitMQ `stop_app`, Postgres down: connections closed, new ones refused), `drop` for every
connection closed at once (every Postgres backend terminated). AE down is its proxy cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal[
    "kill",  # SIGKILL `target`, started again 1 s later
    "pg_drop",  # every Postgres connection closed
    "pg_cut",  # Postgres down for `seconds`
    "amqp_drop",  # every broker connection closed
    "amqp_cut",  # RabbitMQ down for `seconds` (stop_app ... start_app)
    "ae_down",  # AE unreachable for `seconds`
    "ae_lose",  # AE applies the next `count` writes and loses their answer
    "sf_lose",  # SF the same
    "ae_429",  # AE answers the next `count` calls 429 with Retry-After `seconds`
    "ae_5xx",  # AE answers the next `count` calls 503
    "sf_5xx",  # SF answers the next `count` calls 503
    "ae_slow",  # AE answers `count` ms late for `seconds`
]

BURST_LEAD = 0.7  # seconds between a backlog and the fault it is for

ROLES = ("receiver", "syncer-1", "syncer-2", "assigner-1", "assigner-2", "relay-1", "relay-2")


@dataclass(frozen=True)
class Step:
    at: float
    action: Action
    target: str = ""
    seconds: float = 0.0
    count: int = 0

    def describe(self) -> str:
        what = {
            "kill": f"SIGKILL {self.target}",
            "pg_drop": "every Postgres connection dropped",
            "pg_cut": f"Postgres down {self.seconds:g}s",
            "amqp_drop": "every broker connection dropped",
            "amqp_cut": f"RabbitMQ down {self.seconds:g}s",
            "ae_down": f"AE down {self.seconds:g}s",
            "ae_lose": f"AE loses the answers of {self.count} writes",
            "sf_lose": f"SF loses the answers of {self.count} writes",
            "ae_429": f"AE answers {self.count} calls 429 Retry-After {self.seconds:g}",
            "ae_5xx": f"AE answers {self.count} calls 503",
            "sf_5xx": f"SF answers {self.count} calls 503",
            "ae_slow": f"AE {self.count} ms slow for {self.seconds:g}s",
        }[self.action]
        return f"t+{self.at:>5.1f}s  {what}"


def _round(offset: float, scale: float, ae_down: float, pg_down: float) -> list[Step]:
    """One pass through every fault; `scale` stretches the gaps between them."""

    def at(t: float) -> float:
        return offset + t * scale

    return [
        Step(at(2), "kill", "syncer-1"),
        Step(at(4), "ae_lose", count=5),
        Step(at(4), "sf_lose", count=3),
        Step(at(7), "amqp_cut", seconds=6),
        Step(at(16), "kill", "assigner-1"),
        Step(at(16.5), "kill", "relay-1"),
        Step(at(20), "pg_drop"),
        Step(at(23), "ae_429", count=8, seconds=2),
        Step(at(24), "ae_slow", count=400, seconds=8),
        Step(at(27), "amqp_drop"),
        Step(at(30), "pg_cut", seconds=pg_down),
        Step(at(30) + pg_down + 2, "kill", "receiver"),
        Step(at(30) + pg_down + 4, "ae_down", seconds=ae_down),
        Step(at(30) + pg_down + 6, "kill", "syncer-2"),
        Step(at(30) + pg_down + 6.5, "kill", "assigner-2"),
        Step(at(30) + pg_down + 7, "kill", "relay-2"),
        Step(at(30) + pg_down + ae_down + 6, "ae_5xx", count=10),
        Step(at(30) + pg_down + ae_down + 6, "sf_5xx", count=5),
        Step(at(30) + pg_down + ae_down + 8, "ae_lose", count=5),
        Step(at(30) + pg_down + ae_down + 8, "sf_lose", count=3),
    ]


@dataclass(frozen=True)
class Plan:
    name: str
    traffic_seconds: float
    settle_seconds: float
    steps: tuple[Step, ...]

    @property
    def bursts(self) -> tuple[float, ...]:
        """When the traffic's backlogs go out: just before each Postgres outage or drop and each
        broker outage, so the workers are busy when it strikes."""
        hit = ("pg_cut", "pg_drop", "amqp_cut")
        return tuple(max(0.0, s.at - BURST_LEAD) for s in self.steps if s.action in hit)

    @property
    def ends_at(self) -> float:
        return max(s.at + s.seconds if s.action != "ae_429" else s.at for s in self.steps)


def short_plan() -> Plan:
    """Every fault once, AE down 20 s: about 3 minutes in all."""
    steps = _round(0.0, 1.0, ae_down=20.0, pg_down=15.0)
    return Plan("short", traffic_seconds=75.0, settle_seconds=45.0, steps=tuple(steps))


def full_plan() -> Plan:
    """Every fault three times, spread out; AE down 60 s in the first pass: 8 to 10 minutes."""
    first = _round(0.0, 2.0, ae_down=60.0, pg_down=15.0)
    second = _round(first[-1].at + 15, 1.5, ae_down=30.0, pg_down=15.0)
    third = _round(second[-1].at + 15, 1.0, ae_down=20.0, pg_down=15.0)
    steps = (*first, *second, *third)
    end = max(s.at + s.seconds for s in steps if s.action != "ae_429")
    return Plan("full", traffic_seconds=end + 10, settle_seconds=150.0, steps=steps)
