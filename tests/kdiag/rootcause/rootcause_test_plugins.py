"""Plugins that misbehave on purpose, for the isolation tests.

Worker processes import this module by name, which works because they get the test process's
sys.path, and pytest puts this folder on it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping

from kdiag.rootcause import DiagnosisContext, Finding, PluginError, plugin

# Longer than every timeout the tests use, and short enough that an abandoned thread ends soon.
SLEEP_SECONDS = 3.0


@plugin("test-raises")
def raises(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    raise RuntimeError("boom")


@plugin("test-plugin-error")
def plugin_error(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    raise PluginError("the object has no status")


@plugin("test-sleeps")
def sleeps(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    time.sleep(SLEEP_SECONDS)
    return {"slept": "true"}


@plugin("test-exits", isolation="process")
def exits(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    os._exit(3)


@plugin("test-kills-itself", isolation="process")
def kills_itself(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(SLEEP_SECONDS)
    return {}


@plugin("test-wrong-types")
def wrong_types(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, object]:
    return {"count": 3}


@plugin("test-not-a-mapping")
def not_a_mapping(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> list[str]:
    return ["a", "b"]


@plugin("test-not-json", isolation="process")
def not_json(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, object]:
    return {"when": object()}


@plugin("test-prints", isolation="process")
def prints(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    print("noise on stdout")
    sys.stdout.flush()
    return {"printed": "true"}


@plugin("test-echo")
def echo(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Return the PID, the rule and the status of every input, so tests can see what the plugin got."""
    statuses = ",".join(f"{name}={finding.status}" for name, finding in sorted(inputs.items()))
    return {"pid": str(os.getpid()), "rule": context.diagnosis.rule, "inputs": statuses, "object": context.obj.get("kind", "")}


TEST_PLUGINS = (raises, plugin_error, sleeps, exits, kills_itself, wrong_types, not_a_mapping, not_json, prints, echo)
