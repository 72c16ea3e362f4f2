"""Settings: defaults, environment, flags winning, and clear errors for bad values."""

from __future__ import annotations

import argparse

import pytest

from app import config as settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    config = settings.load(parse(), environ={})
    assert (config.db, config.host, config.port) == ("data/events.db", "127.0.0.1", 5000)
    assert config.synchronous == "FULL" and config.admin_token == ""


def test_environment_then_flags_win() -> None:
    environ = {
        "ANALYTICS_DB": "/env.db",
        "ANALYTICS_PORT": "6000",
        "ANALYTICS_CORS_ORIGINS": "https://a.example/, *",
    }
    config = settings.load(parse("--port", "7000"), environ=environ)
    assert (config.db, config.port) == ("/env.db", 7000)
    assert config.cors_origins == ("https://a.example", "*")


@pytest.mark.parametrize(
    "environ",
    [
        {"ANALYTICS_PORT": "http"},
        {"ANALYTICS_SYNCHRONOUS": "OFF"},
        {"ANALYTICS_RECONCILE_MINUTES": "-1"},
        {"ANALYTICS_RECONCILE_MINUTES": "nan"},
        {"ANALYTICS_ACCESS_LOG": "maybe"},
    ],
)
def test_bad_settings_exit_with_a_message(environ: dict[str, str]) -> None:
    with pytest.raises(SystemExit, match="invalid"):
        settings.load(parse(), environ=environ)


def test_admin_token_is_not_in_repr() -> None:
    config = settings.load(parse(), environ={"ANALYTICS_ADMIN_TOKEN": "s3cret-token"})
    assert "s3cret-token" not in repr(config)
