"""The state folder lock that keeps two workers of one app id from sharing local databases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdiag.errors import KdiagError
from kdiag.settings import load_settings
from streams.worker import lock_state_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


def settings_for(state_dir: Path, app_id: str = "team-worker"):
    return load_settings(environ={}, state_dir=state_dir, app_id=app_id)


def test_second_lock_of_app_id_rejected(tmp_path: Path):
    first_lock = lock_state_dir(settings_for(tmp_path))
    try:
        with pytest.raises(KdiagError) as raised:
            lock_state_dir(settings_for(tmp_path))
    finally:
        first_lock.close()

    message = str(raised.value)
    assert f"another worker of app id team-worker uses the state folder {tmp_path}" in message
    assert "KDIAG_STATE_DIR" in message


def test_other_app_id_shares_folder(tmp_path: Path):
    first = lock_state_dir(settings_for(tmp_path, "team-a"))
    second = lock_state_dir(settings_for(tmp_path, "team-b"))
    first.close()
    second.close()


def test_lock_free_after_close(tmp_path: Path):
    lock_state_dir(settings_for(tmp_path)).close()
    lock_state_dir(settings_for(tmp_path)).close()


def test_worker_command_stops_on_held_lock(tmp_path: Path):
    first_lock = lock_state_dir(settings_for(tmp_path))
    try:
        # The lock comes before any broker connection, so no broker is needed here.
        result = subprocess.run(
            [sys.executable, "-m", "kdiag.cli", "worker", "--state-dir", str(tmp_path), "--app-id", "team-worker"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            env={"PATH": "/usr/bin:/bin", "KDIAG_BOOTSTRAP_SERVERS": "127.0.0.1:9"},
        )
    finally:
        first_lock.close()

    assert result.returncode == 2
    assert "another worker of app id team-worker uses the state folder" in result.stderr
