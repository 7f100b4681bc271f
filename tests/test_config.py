"""Settings: flags over ITM_* variables over defaults, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from itm.config import Settings


def test_flag_wins_over_environment_which_wins_over_default() -> None:
    env = {"ITM_BATCH_SIZE": "32", "ITM_DB": "from_env", "ITM_SERVE": "false"}
    settings = Settings.from_args(["--db", "from_flag", "--urls", "list.txt"], env)
    assert (settings.db, settings.batch_size, settings.serve) == ("from_flag", 32, False)
    assert settings.urls == Path("list.txt")
    assert settings.port == 5000 and settings.mongo_uri is None
    assert Settings.from_args(["--serve"], env).serve is True


@pytest.mark.parametrize(
    "env, words",
    [
        ({"ITM_PORT": "abc"}, "ITM_PORT='abc' is not a valid int"),
        ({"ITM_SERVE": "maybe"}, "ITM_SERVE='maybe' is not a valid bool"),
        ({"ITM_BATCH_SIZE": "0"}, "batch_size must be at least 1"),
        ({"ITM_PER_HOST": "-1"}, "per_host cannot be negative"),
        # The dashboard links to it: never a javascript: or other scheme.
        ({"ITM_RAY_DASHBOARD_URL": "javascript:alert(1)"}, "ray_dashboard_url must be an http"),
    ],
)
def test_bad_environment_values_are_named(env: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Settings.from_env(env)


@pytest.mark.parametrize("flags", [["--png-level", "10"], ["--deadline", "0"], ["--port", "x"]])
def test_bad_flags_exit_with_usage(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        Settings.from_args(flags, {})
    assert usage.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_never_shows_a_password_from_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        Settings.from_args(["--help"], {"ITM_MONGO_URI": "mongodb://u:secret@host/"})
    assert "secret" not in capsys.readouterr().out
