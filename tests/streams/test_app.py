"""The Faust application's settings (streams/app.py)."""

from __future__ import annotations

from pathlib import Path

from kdiag.rules import RuleSet
from kdiag.settings import Settings
from streams.app import create_app


def test_create_app_stream_buffer_from_settings(tmp_path: Path):
    settings = Settings(state_dir=tmp_path, stream_buffer_max_records=123)

    app, runtime = create_app(settings, lambda: RuleSet([]))
    try:
        # Faust's own default, 4,096 records of up to 1 MB each, would let a catch-up buffer gigabytes.
        assert app.conf.stream_buffer_maxsize == 123
    finally:
        runtime.close()


def test_no_topic_committed_from_acks(tmp_path: Path):
    settings = Settings(state_dir=tmp_path)

    app, runtime = create_app(settings, lambda: RuleSet([]))
    try:
        acks: dict[str, bool] = {}
        for agent in app.agents.values():
            for topic in agent.channel.topics:
                acks[topic] = agent.channel.acks
        # Each stage commits its input topics' offsets from its committed transactions.
        assert set(acks) == {settings.changes_topic, settings.diagnoses_topic, settings.events_topic, settings.actions_topic}
        assert acks[settings.changes_topic] is False
        assert acks[settings.diagnoses_topic] is False
        assert acks[settings.events_topic] is False
        assert acks[settings.actions_topic] is False
    finally:
        runtime.close()
