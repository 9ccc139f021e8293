"""The alert center's configuration on a compacted Kafka topic, so that workers pick up a change at once.

The topic contains one RuleRecord, keyed CONFIG_NAME, whose document is the configuration as JSON (the
keys of docs/alertcenter.md). A record without a value restores the defaults. `kdiag center
apply|show|reset` write and read it, and each worker follows it with a RuleFeed over a
CenterConfigBook. A configuration that fails validation is rejected and the one in force stays.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

from kdiag.alertcenter.center import AlertCenter
from kdiag.alertcenter.config import AlertCenterConfig
from kdiag.errors import ConfigError
from kdiag.rule_store import RuleDocument, publish_documents
from kdiag.settings import Settings

log = logging.getLogger(__name__)

CONFIG_NAME = "alert-center"


class CenterConfigBook:
    """Applies configuration records to an AlertCenter."""

    def __init__(self, center: AlertCenter) -> None:
        self.center = center
        self.applied = 0

    def apply(self, name: str, record: Mapping[str, Any] | None) -> str:
        """Apply one record. Returns applied, reset or rejected."""
        if name != CONFIG_NAME:
            log.warning("record with an unknown key ignored", extra={"key": name, "expected": CONFIG_NAME})
            return "rejected"
        if record is None:
            self.center.reconfigure(AlertCenterConfig())
            self.applied += 1
            log.info("alert center config reset to the defaults")
            return "reset"
        try:
            self.center.reconfigure(orjson.loads(record["document"]))
        except (orjson.JSONDecodeError, ConfigError) as error:
            log.error("alert center config rejected; the config in force stays", extra={"source": record["source"], "problem": str(error)})
            return "rejected"
        self.applied += 1
        log.info("alert center config applied", extra={"source": record["source"]})
        return "applied"


def read_config_file(path: Path) -> dict[str, Any]:
    """Read and validate a YAML or JSON configuration file. Raises ConfigError naming the file."""
    try:
        stream = io.StringIO(path.read_text(encoding="utf-8"))
        stream.name = str(path)  # PyYAML names the file in its error marks.
        raw = yaml.safe_load(stream)
    except OSError as error:
        raise ConfigError(f"cannot read alert center config {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"alert center config {path} is not valid YAML: {error}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"alert center config {path}: expected a mapping of settings, got {type(raw).__name__}")
    try:
        AlertCenterConfig.from_mapping(raw)
    except ConfigError as error:
        raise ConfigError(f"alert center config {path}: {error}") from None
    return raw


def publish_config(settings: Settings, raw: Mapping[str, Any], source: str) -> None:
    """Validate a configuration, then write it to the config topic."""
    AlertCenterConfig.from_mapping(raw)
    publish_documents(settings, settings.center_config_topic, [RuleDocument(CONFIG_NAME, raw, source)])
