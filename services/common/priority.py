"""A process that may wait gives the CPU to those that may not.

The relay's work waits durably in the outbox and AE learns it minutes later anyway (its
connector syncs every 2 minutes); the receiver's ack (SF backs off when it is slow) and the
workers' decisions do not wait well. On a host the relay shares with them, a relay draining a
backlog as fast as AE answers took a core of two, and the receiver's ack p99 beside it
doubled (31 -> 65 ms in the benchmark's 50% phase). `yield_cpu` lowers this process's
priority so that the others go first when the CPU is short and the relay still gets every
cycle they leave.

Linux groups processes by session ("autogroups", `/proc/sys/kernel/sched_autogroup_enabled`)
and shares the CPU between groups before it looks at a process's nice value: a process that
leads its own session (systemd services, the benchmark's roles, `setsid`) is its own group, so
its group's nice value (`/proc/self/autogroup`) is what counts, and it is set too. A process
sharing its session (started from a shell) does not touch the group: it would lower the shell's
other processes with it. A session in the kernel's default group (the session of init, as
in some containers) has no nice value of its own: `/proc/self/autogroup` reads empty there, and
the group is left alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def group_nice(path: Path | None = None) -> int | None:
    """The nice value of a process's CPU group ("/autogroup-123 nice 0" in `path`, this
    process's by default), or None where there is none: no autogroups, or the kernel's default
    group, whose file reads empty."""
    try:
        fields = (path or AUTOGROUP).read_text().split()
    except OSError:
        return None
    if len(fields) < 3 or fields[-2] != "nice":
        return None
    try:
        return int(fields[-1])
    except ValueError:
        return None


def yield_cpu(nice: int) -> int | None:
    """Lower this process's CPU priority to `nice` (never raise it); the nice value now in
    force, or None where the platform has none."""
    if not hasattr(os, "setpriority"):
        log.info("no process priorities on this platform: the relay runs at normal priority")
        return None
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    group = group_nice() if os.getsid(0) == os.getpid() else None
    if group is not None and nice > group:
        try:
            AUTOGROUP.write_text(str(nice))
        except OSError as exc:
            log.warning("could not set the nice value of this session's CPU group: %s", exc)
    return os.getpriority(os.PRIO_PROCESS, 0)
