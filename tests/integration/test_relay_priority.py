"""A process that runs the relay alone lowers its CPU priority to OWNERSYNC_RELAY_NICE, so that
on a shared host the receiver's acks and the workers' decisions go first; a process running
other roles keeps its priority."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.priority import AUTOGROUP, group_nice
from services.common.settings import Settings
from tests.integration.processes import worker_role

pytestmark = pytest.mark.integration


async def _priority_once_up(
    settings: Settings, role: str, nice: int, log: Path
) -> tuple[int, int | None]:
    """The nice value of a `role` process (and of its CPU group) once its /healthz answers."""
    async with worker_role(settings, role, log, RELAY_NICE=str(nice)) as (proc, _):
        # /proc/PID/stat: the 19th field is the nice value (the 2nd, "(comm)", has no spaces)
        nice_now = int(Path(f"/proc/{proc.pid}/stat").read_text().split()[18])
        return nice_now, group_nice(Path(f"/proc/{proc.pid}/autogroup"))


@pytest.mark.parametrize(
    ("role", "relay_nice", "expected"),
    [
        ("relay", 9, 9),  # lowered, and its CPU group with it
        ("relay", 0, 0),  # RELAY_NICE=0: left at normal priority
        ("syncer", 9, 0),  # not the relay: keeps its priority
    ],
)
async def test_only_a_relay_process_takes_the_configured_priority(
    base_settings: Settings,
    clean: None,
    tmp_path: Path,
    role: str,
    relay_nice: int,
    expected: int,
) -> None:
    nice, group = await _priority_once_up(base_settings, role, relay_nice, tmp_path / "role.log")
    assert nice == expected
    if AUTOGROUP.exists():  # Linux with autogroups: the group's value is what counts
        assert group == expected  # the role leads its own session, so its own group
