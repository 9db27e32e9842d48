"""The action vocabulary of event-log imports."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

from features.actions import ACTION_ALIASES, CHANNELS, TARGETS, action_table
from features.events import Channel


def test_channels_are_the_event_contracts_channels() -> None:
    assert set(get_args(Channel)) == CHANNELS


def test_every_target_but_skip_maps_to_an_action() -> None:
    table = action_table({f"w_{t}": t for t in TARGETS})
    assert table["w_skip"] == ("skip", "")
    assert {table[f"w_{t}"] for t in TARGETS - {"skip"}} <= set(ACTION_ALIASES.values())


def test_the_command_line_builds_without_loading_the_importer() -> None:
    # The help lists the actions and channels; loading the importer for that cost about half
    # of every command's start-up.
    code = ("import sys; from streams.cli import build_parser, _load_extensions; _load_extensions(); "
            "build_parser(); print('features.importer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
