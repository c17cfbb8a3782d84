"""`yield_cpu` lowers the process's CPU priority, and its session's CPU group's where the
process leads that session alone; it never raises a priority. Each case runs in a child process:
a lowered priority cannot be raised again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.common import priority
from services.common.priority import AUTOGROUP, group_nice

CHILD = """
import json, os, sys
from pathlib import Path
from services.common.priority import AUTOGROUP, group_nice, yield_cpu
if int(sys.argv[2]):
    os.nice(int(sys.argv[2]))
    if group_nice() is not None:
        AUTOGROUP.write_text(sys.argv[2])
got = yield_cpu(int(sys.argv[1]))
print(json.dumps({
    "returned": got,
    "nice": os.getpriority(os.PRIO_PROCESS, 0),
    "group": group_nice(),
}))
"""


def _child(nice: int, *, own_session: bool, start_at: int = 0) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(nice), str(start_at)],
        capture_output=True,
        text=True,
        start_new_session=own_session,
        cwd=Path(__file__).resolve().parents[2],
        timeout=30,
    )
    assert done.returncode == 0, f"the child failed ({done.returncode}):\n{done.stderr}"
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_a_session_leader_lowers_itself_and_its_cpu_group() -> None:
    got = _child(7, own_session=True)
    assert (got["returned"], got["nice"]) == (7, 7)
    if AUTOGROUP.exists():  # Linux with autogroups: the group's value is what counts
        assert got["group"] == 7


def test_a_process_sharing_its_session_leaves_the_group_alone() -> None:
    got = _child(7, own_session=False)
    assert got["nice"] == 7
    if AUTOGROUP.exists():
        # The group is this test's session: lowering it would lower pytest too.
        # In the kernel's default group (some CI containers) there is none to read: None.
        assert got["group"] == group_nice()


def test_a_priority_is_never_raised() -> None:
    got = _child(5, own_session=True, start_at=12)
    assert got["nice"] == 12
    if AUTOGROUP.exists():
        assert got["group"] == 12


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/autogroup-85 nice 0\n", 0),
        ("/autogroup-7 nice -5\n", -5),
        ("", None),  # the kernel's default group (a session of init): nothing to read
        ("garbage\n", None),
    ],
)
def test_the_group_nice_value_is_read_or_none(
    tmp_path: Path, text: str, expected: int | None
) -> None:
    path = tmp_path / "autogroup"
    path.write_text(text)
    assert group_nice(path) == expected


def test_a_session_in_the_default_group_leaves_the_group_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last CI run: /proc/self/autogroup read empty and yield_cpu raised IndexError."""
    empty = tmp_path / "autogroup"
    empty.write_text("")
    monkeypatch.setattr(priority, "AUTOGROUP", empty)
    monkeypatch.setattr(os, "getsid", lambda _pid: os.getpid())
    monkeypatch.setattr(os, "setpriority", lambda *_args: None)
    assert priority.yield_cpu(30) == os.getpriority(os.PRIO_PROCESS, 0)
    assert empty.read_text() == ""
