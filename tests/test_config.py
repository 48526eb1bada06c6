"""Configuration: the seed's defaults, MM_* environment overrides, CLI overrides, errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from config import Config, settings_table, unknown_environment
from modelmanager.errors import ConfigError, ModelManagerError

SEED_DEFAULTS: dict[str, Any] = {
    "OLLAMA_BASE_URL": "http://localhost:11434",
    "VRAM_SAFETY_MARGIN_MB": 1024,
    "VRAM_ESTIMATION_MULTIPLIER": 1.3,
    "SCHEDULER_LOOP_INTERVAL": 0.1,
    "SCHEDULER_STRATEGY": "demand_based",
    "MODEL_KEEP_ALIVE": 300,
    "MAX_CONCURRENT_PER_MODEL": 20,
    "QUEUE_MAX_SIZE": 1000,
}


@pytest.mark.parametrize(("name", "value"), SEED_DEFAULTS.items())
def test_config_defaults_match_the_seed(name: str, value: Any) -> None:
    config = Config.load(environ={})
    assert getattr(config, name) == value


def test_config_defaults_of_this_design() -> None:
    config = Config.load(environ={})
    assert (config.HOST, config.HTTP_PORT) == ("127.0.0.1", 5001)
    assert config.safety_margin_bytes == 1024 * 1024 * 1024
    assert config.budget_bytes is None  # no budget: loads wait without NVML


def test_config_load_ignores_the_process_environment_when_given_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MM_QUEUE_MAX_SIZE", "7")
    assert Config.load(environ={}).QUEUE_MAX_SIZE == 1000
    assert Config.load().QUEUE_MAX_SIZE == 7


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("OLLAMA_BASE_URL", "http://gpu-box:11434", "http://gpu-box:11434"),
        ("VRAM_SAFETY_MARGIN_MB", "512", 512),
        ("VRAM_ESTIMATION_MULTIPLIER", "1.5", 1.5),
        ("SCHEDULER_LOOP_INTERVAL", "0.05", 0.05),
        ("MODEL_KEEP_ALIVE", "0", 0.0),
        ("MODEL_KEEP_ALIVE", "60", 60.0),
        ("MAX_CONCURRENT_PER_MODEL", "4", 4),
        ("QUEUE_MAX_SIZE", "50000", 50000),
        ("VRAM_BUDGET_MB", "8192", 8192),
        ("SQLITE_SYNCHRONOUS", "normal", "NORMAL"),
        ("HTTP_PORT", "0", 0),
    ],
)
def test_config_environment_overrides_defaults(name: str, raw: str, value: Any) -> None:
    config = Config.load(environ={f"MM_{name}": raw})
    assert getattr(config, name) == value
    assert type(getattr(config, name)) is type(value)


def test_config_environment_needs_the_mm_prefix() -> None:
    assert Config.load(environ={"QUEUE_MAX_SIZE": "5"}).QUEUE_MAX_SIZE == 1000


def test_config_budget_in_bytes() -> None:
    assert Config.load(environ={"MM_VRAM_BUDGET_MB": "2048"}).budget_bytes == 2048 * 1024 * 1024


def test_config_cli_overrides_win_over_environment() -> None:
    config = Config.load(
        environ={"MM_HTTP_PORT": "6000", "MM_QUEUE_MAX_SIZE": "10", "MM_HOST": "0.0.0.0"},
        overrides={"HTTP_PORT": 7000, "QUEUE_MAX_SIZE": None},  # None: flag not given
    )
    assert config.HTTP_PORT == 7000
    assert config.QUEUE_MAX_SIZE == 10
    assert config.HOST == "0.0.0.0"


@pytest.mark.parametrize(
    ("environ", "overrides", "names"),
    [
        ({"MM_QUEUE_MAX_SIZE": "lots"}, {}, ["MM_QUEUE_MAX_SIZE", "lots"]),
        ({"MM_VRAM_SAFETY_MARGIN_MB": "1.5"}, {}, ["VRAM_SAFETY_MARGIN_MB", "1.5"]),
        ({"MM_VRAM_ESTIMATION_MULTIPLIER": "x1.3"}, {}, ["VRAM_ESTIMATION_MULTIPLIER"]),
        ({"MM_VRAM_ESTIMATION_MULTIPLIER": "0.5"}, {}, ["VRAM_ESTIMATION_MULTIPLIER", "0.5"]),
        ({"MM_VRAM_ESTIMATION_MULTIPLIER": "nan"}, {}, ["VRAM_ESTIMATION_MULTIPLIER", "nan"]),
        ({"MM_SCHEDULER_LOOP_INTERVAL": "0"}, {}, ["SCHEDULER_LOOP_INTERVAL"]),
        ({"MM_MAX_CONCURRENT_PER_MODEL": "0"}, {}, ["MAX_CONCURRENT_PER_MODEL"]),
        ({"MM_VRAM_SAFETY_MARGIN_MB": "-1"}, {}, ["VRAM_SAFETY_MARGIN_MB", "-1"]),
        ({"MM_MODEL_KEEP_ALIVE": ""}, {}, ["MODEL_KEEP_ALIVE"]),
        ({"MM_SCHEDULER_STRATEGY": "round_robin"}, {}, ["SCHEDULER_STRATEGY", "round_robin"]),
        ({"MM_OLLAMA_BASE_URL": "localhost:11434"}, {}, ["OLLAMA_BASE_URL", "localhost:11434"]),
        ({"MM_OLLAMA_BASE_URL": "ftp://host"}, {}, ["OLLAMA_BASE_URL"]),
        ({"MM_SQLITE_SYNCHRONOUS": "OFF"}, {}, ["SQLITE_SYNCHRONOUS", "OFF"]),
        ({"MM_HTTP_PORT": "65536"}, {}, ["HTTP_PORT", "65536"]),
        ({"MM_AUTO_PULL": "maybe"}, {}, ["MM_AUTO_PULL", "true or false", "maybe"]),
        ({}, {"HTTP_PORT": 99999}, ["HTTP_PORT", "at most 65535", "99999"]),
        ({}, {"QUEUE_MAX_SIZE": 0}, ["QUEUE_MAX_SIZE"]),
        ({}, {"AGING_SECONDS": 0.0}, ["AGING_SECONDS"]),
        ({}, {"SCHEDULER_STRATEGY": "fifo"}, ["SCHEDULER_STRATEGY", "fifo"]),
    ],
)
def test_config_bad_value_raises_an_error_naming_the_setting(
    environ: dict[str, str], overrides: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        Config.load(environ=environ, overrides=overrides)
    for name in names:
        assert name in str(info.value)
    assert isinstance(info.value, ModelManagerError)


def test_config_every_setting_has_a_default_and_help() -> None:
    table = settings_table()
    assert [name for name, _, _ in table] == [f.name for f in dataclasses.fields(Config)]
    for name, default, help_text in table:
        assert help_text.strip(), name
        assert getattr(Config(), name) == default
    assert set(SEED_DEFAULTS) <= {name for name, _, _ in table}


def test_config_highest_port_is_accepted() -> None:
    assert Config.load(environ={"MM_HTTP_PORT": "65535"}).HTTP_PORT == 65535


def test_unknown_environment_names_come_with_the_closest_setting() -> None:
    environ = {
        "MM_MAX_ATTMPTS": "5",  # a typo
        "MM_PORT": "6000",  # a guess
        "MM_http_port": "6000",  # the wrong case
        "MM_XYZZY": "1",  # nothing like a setting
        "MM_QUEUE_MAX_SIZE": "5",  # a setting: not reported
        "MAX_ATTEMPTS": "5",  # no MM_ prefix: not ours
    }
    assert unknown_environment(environ) == [
        ("MM_MAX_ATTMPTS", "MM_MAX_ATTEMPTS"),
        ("MM_PORT", "MM_HTTP_PORT"),
        ("MM_XYZZY", None),
        ("MM_http_port", "MM_HTTP_PORT"),
    ]
    assert unknown_environment({f"MM_{name}": "1" for name, _, _ in settings_table()}) == []
