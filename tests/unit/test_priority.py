"""`yield_cpu` lowers the process's CPU priority, and its session's CPU group's where the
process leads that session alone; it never raises a priority. Each case runs in a child process:
a lowered priority cannot be raised again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from services.common.priority import AUTOGROUP

CHILD = """
import json, os, sys
from pathlib import Path
from services.common.priority import yield_cpu
group = Path("/proc/self/autogroup")
if int(sys.argv[2]):
    os.nice(int(sys.argv[2]))
    if group.exists():
        group.write_text(sys.argv[2])
got = yield_cpu(int(sys.argv[1]))
print(json.dumps({
    "returned": got,
    "nice": os.getpriority(os.PRIO_PROCESS, 0),
    "group": group.read_text().split()[-1] if group.exists() else None,
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
        assert got["group"] == "7"


def test_a_process_sharing_its_session_leaves_the_group_alone() -> None:
    got = _child(7, own_session=False)
    assert got["nice"] == 7
    if AUTOGROUP.exists():
        # The group is this test's session: lowering it would lower pytest too.
        assert got["group"] == AUTOGROUP.read_text().split()[-1]


def test_a_priority_is_never_raised() -> None:
    got = _child(5, own_session=True, start_at=12)
    assert got["nice"] == 12
    if AUTOGROUP.exists():
        assert got["group"] == "12"
