"""Settings as operators write them: blank values, typos in variable names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.live_cli import load_settings
from streams.settings import Settings


def test_a_blank_scoring_config_means_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a compose file's ``LEADPULSE_SCORING_CONFIG: ${SCORING_CONFIG:-}`` gives when unset.
    monkeypatch.setenv("LEADPULSE_SCORING_CONFIG", "")
    assert Settings().scoring_config is None


def test_a_blank_api_token_is_refused_rather_than_taken_as_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADPULSE_WEB_API_TOKEN", "")
    with pytest.raises(ValidationError, match="set but empty"):
        Settings()


def test_a_misspelt_variable_is_reported_with_the_name_meant(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEADPULSE_BATCH_SIZ", "50")
    monkeypatch.setenv("LEADPULSE_TOPICS__SCORES", "s")  # nested names are known
    monkeypatch.setenv("LEADPULSE_REDIS_SERVER", "/bin/true")  # read by streams/embedded.py
    settings = load_settings()
    assert settings.batch_size == 500  # still ignored, but no longer silently
    err = capsys.readouterr().err
    assert "ignoring unknown setting LEADPULSE_BATCH_SIZ (did you mean LEADPULSE_BATCH_SIZE?)" in err
    assert "TOPICS__SCORES" not in err and "REDIS_SERVER" not in err
