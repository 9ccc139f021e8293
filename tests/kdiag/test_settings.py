"""Settings from the environment: types, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdiag.errors import ConfigError
from kdiag.settings import load_settings


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("1", True), ("False", False), ("0", False)])
def test_boolean_from_environment(raw: str, expected: bool) -> None:
    assert load_settings(environ={"KDIAG_FORWARD_WARNING_EVENTS": raw}).forward_warning_events is expected


def test_invalid_boolean_names_variable() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"KDIAG_FORWARD_WARNING_EVENTS": "maybe"})
    assert "invalid value 'maybe' for KDIAG_FORWARD_WARNING_EVENTS: expected bool" in str(raised.value)


def test_numbers_and_paths_from_environment() -> None:
    settings = load_settings(environ={"KDIAG_PLUGIN_PROCESSES": "4", "KDIAG_CENTER_CONFIG_FILE": "/tmp/center.yaml"})
    assert settings.plugin_processes == 4
    assert settings.center_config_file == Path("/tmp/center.yaml")


def test_collector_settings_from_environment() -> None:
    settings = load_settings(environ={"KDIAG_GC_FREEZE_STARTUP": "false", "KDIAG_GC_YOUNG_THRESHOLD_OBJECTS": "5000"})
    assert settings.gc_freeze_startup is False
    assert settings.gc_young_threshold_objects == 5000


def test_zero_young_threshold_rejected() -> None:
    # gc.set_threshold(0) would turn automatic collection off.
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"KDIAG_GC_YOUNG_THRESHOLD_OBJECTS": "0"})
    assert "KDIAG_GC_YOUNG_THRESHOLD_OBJECTS 0: expected at least 1" in str(raised.value)
