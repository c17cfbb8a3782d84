"""`ownersync relay` on its own lowers its CPU priority (OWNERSYNC_RELAY_NICE, 10), so that on a
shared machine the decisions get the CPU first; `ownersync run` (every role in one process)
keeps every role equal, and 0 turns it off."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app, roles


@pytest.fixture
def niced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(roles.os, "nice", calls.append)
    monkeypatch.setattr(roles, "_serve", lambda *args, **kwargs: None)
    return calls


def _invoke(*args: str, **env: Any) -> None:
    result = CliRunner().invoke(app, list(args), env={k: str(v) for k, v in env.items()})
    assert result.exit_code == 0, result.output


def test_the_relay_alone_gives_itself_niceness_10(niced: list[int]) -> None:
    _invoke("relay")
    assert niced == [10]


def test_the_relay_niceness_is_a_setting_and_0_keeps_it_equal(niced: list[int]) -> None:
    _invoke("relay", OWNERSYNC_RELAY_NICE=5)
    _invoke("relay", OWNERSYNC_RELAY_NICE=0)
    assert niced == [5]


def test_every_role_in_one_process_is_not_niced(niced: list[int]) -> None:
    _invoke("run")
    _invoke("syncer")
    assert niced == []
