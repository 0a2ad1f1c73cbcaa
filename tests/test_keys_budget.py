"""Budgets in the keys file: written, read back, validated, changed with `sluice keys budget`."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main
from proxy.keybook import create_key, revoke_key, set_budget
from proxy.keys import KeyFileError, read_keys
from proxy.limits import Limits


def test_a_budget_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    create_key(path, "team", Limits(rpm=10), budget=(25.0, "week"))
    create_key(path, "plain", Limits())
    keys = read_keys(path)
    assert (keys["team"].budget_usd, keys["team"].budget_period) == (25.0, "week")
    assert keys["team"].limits.rpm == 10
    assert (keys["plain"].budget_usd, keys["plain"].budget_period) == (None, None)
    assert "budget" not in path.read_text().split("[keys.plain]")[1]


def test_set_and_clear_a_budget(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    create_key(path, "team", Limits(concurrency=3), models=("gpt-4o*",))
    set_budget(path, "team", (0.5, "total"))
    key = read_keys(path)["team"]
    assert (key.budget_usd, key.budget_period, key.models, key.limits.concurrency) == (
        0.5, "total", ("gpt-4o*",), 3,
    )  # fmt: skip
    set_budget(path, "team", None)
    assert read_keys(path)["team"].budget_usd is None
    revoke_key(path, "team")
    with pytest.raises(KeyFileError, match="no active key"):
        set_budget(path, "team", (1.0, "day"))


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("budget_usd = 5\n", "budget_period must be one of"),
        ('budget_usd = -1\nbudget_period = "day"\n', "budget_usd must be"),
        ('budget_usd = "5"\nbudget_period = "day"\n', "budget_usd must be"),
        ('budget_usd = 5\nbudget_period = "year"\n', "budget_period must be one of"),
    ],
)
def test_a_bad_budget_in_the_file_is_refused(tmp_path: Path, entry: str, problem: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[keys.team]\nid = "abc"\nhash = "sha256:0"\ncreated = "x"\n{entry}')
    with pytest.raises(KeyFileError, match=problem):
        read_keys(path)


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "keys.toml")
    args = ["keys", "--file", path, "create", "--name", "team"]
    args += ["--budget-usd", "25", "--budget-period", "day"]
    assert main(args) == 0
    assert read_keys(Path(path))["team"].budget_usd == 25.0
    assert main(["keys", "--file", path, "budget", "team", "--usd", "3.5", "--period", "month"]) == 0
    assert (read_keys(Path(path))["team"].budget_period) == "month"
    assert "set to $3.5 per month" in capsys.readouterr().err
    assert main(["keys", "--file", path, "budget", "team", "--clear"]) == 0
    assert read_keys(Path(path))["team"].budget_usd is None
    # Half a budget is a mistake, said in one line.
    assert main(["keys", "--file", path, "budget", "team", "--usd", "3"]) == 2
    assert "--usd and --period go together" in capsys.readouterr().err
    assert main(["keys", "--file", path, "create", "--name", "x", "--budget-usd", "3"]) == 2
