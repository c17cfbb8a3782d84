"""`ownersync demo`, the README's first command, on the embedded default (SQLite, in-process
broker, both simulators over HTTP)."""

from __future__ import annotations

from rich.console import Console

from services.demo.replay import run_demo


async def test_demo_shows_every_assignment_action_and_seed_scenario_with_its_rule() -> None:
    console = Console(record=True, width=250, emoji=False, highlight=False)
    await run_demo(console)
    text = console.export_text()
    for expected in (
        "A2, S4",
        "A1, S5",
        "A3",
        "A5, S5",
        "A6, S6",
        "A7, S5",
        "A8",
        "S1 ",
        "S2 ",
        "S4 ",
        "S5 ",
        "S6 ",
        "S7 ",
        "S8 ",
        "S1 x62, S2 x38",
        "user 105 (erin_unconnected)",
        "queue inbound_leads",
    ):
        assert expected in text, expected
    assert text.count("refused") >= 8
    assert "?" not in text.split("The four scenarios")[1].split("Every decision")[0]
