"""Plugins: the registry of Python plugins and the contract every kind of plugin call follows.

A Python plugin is a function ``(context: DiagnosisContext, inputs: Mapping[str, Finding]) ->
Mapping[str, str]``. inputs contains the findings of the node's inputs by node name, whatever their
status. The function returns the values of its finding, or raises PluginError (or any exception)
to make the finding FAILED. Every call has a timeout, and a call that does not return in time gives
a TIMED_OUT finding.

Plugins run in one of three ways (the plugin's kind):

- inline: in a thread of the calling process. A call that times out leaves its thread running,
  because Python cannot stop a thread, so code that may block belongs in a worker process;
- process: in a worker process of a ProcessPool (see process_pool.py), killed and replaced when the
  call times out or the process dies;
- remote: an HTTP endpoint declared in the graph file (see remote.py).

Python plugins are registered by name: the shipped ones in kdiag.rootcause.builtin, others through
the entry point group ``kdiag.plugins``, whose entries name a PythonPlugin or a plugin function.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

from kdiag.errors import KdiagError
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import FAILED, MAX_ERROR_LENGTH, OK, TIMED_OUT, Finding, InvalidOutput, PluginError, check_values, shorten

log = logging.getLogger(__name__)

INLINE = "inline"
PROCESS = "process"
REMOTE = "remote"
ISOLATIONS = (INLINE, PROCESS)
ENTRY_POINT_GROUP = "kdiag.plugins"

PluginFunction = Callable[[DiagnosisContext, Mapping[str, Finding]], Mapping[str, str]]


@dataclass(frozen=True)
class Outcome:
    """What one plugin call gave: the status, values and error of its finding."""

    status: str
    values: Mapping[str, str] = dataclasses.field(default_factory=dict)
    error: str = ""


class PluginCall(Protocol):
    """A plugin bound to the way it runs. Each GraphNode has one, and run_graph calls it."""

    name: str
    kind: str

    def call(self, context: DiagnosisContext, inputs: Mapping[str, Finding], timeout_seconds: float) -> Outcome: ...


@dataclass(frozen=True)
class PythonPlugin:
    """A registered Python plugin.

    reference is "module:attribute", the name under which a worker process imports the plugin.
    isolation is how graphs run it (inline or process) unless a node sets its own.
    """

    name: str
    function: PluginFunction
    reference: str
    isolation: str = INLINE
    description: str = ""

    def __call__(self, context: DiagnosisContext, inputs: Mapping[str, Finding]) -> Mapping[str, str]:
        return self.function(context, inputs)


def plugin(name: str, *, isolation: str = INLINE) -> Callable[[PluginFunction], PythonPlugin]:
    """Decorate a module-level function as a PythonPlugin named name."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")

    def wrap(function: PluginFunction) -> PythonPlugin:
        description = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
        reference = f"{function.__module__}:{function.__qualname__}"
        return PythonPlugin(name, function, reference, isolation, description)

    return wrap


def resolve_reference(reference: str) -> PythonPlugin | PluginFunction:
    """Import "module:attribute" (attribute may be dotted) and return the object it names."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ImportError(f"invalid plugin reference {reference!r}: expected module:attribute")
    target: Any = __import__(module_name, fromlist=["__name__"])
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


class PluginRegistry:
    """Python plugins by name. Names are unique: a second plugin under a taken name is rejected."""

    def __init__(self, plugins: Iterable[PythonPlugin] = ()) -> None:
        self._plugins: dict[str, PythonPlugin] = {}
        # Entry points that could not be loaded, by name, with the reason. Graph validation shows
        # the reason when a graph names one of them.
        self.load_errors: dict[str, str] = {}
        for item in plugins:
            self.register(item)

    @classmethod
    def default(cls) -> "PluginRegistry":
        """Return a registry of the shipped plugins and those of the kdiag.plugins entry points."""
        from kdiag.rootcause.builtin import BUILTIN_PLUGINS

        registry = cls(BUILTIN_PLUGINS)
        registry.load_entry_points()
        return registry

    def register(self, item: PythonPlugin) -> None:
        if not isinstance(item, PythonPlugin):
            raise KdiagError(f"expected a PythonPlugin, got {type(item).__name__}. Decorate the function with kdiag.rootcause.plugin")
        existing = self._plugins.get(item.name)
        if existing is not None and existing.function is not item.function:
            raise KdiagError(f"plugin name {item.name!r} is already registered by {existing.reference}, so {item.reference} cannot use it")
        self._plugins[item.name] = item

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register the plugins of every entry point in group.

        An entry point that fails to load, or whose name is taken by another plugin, is logged and
        recorded in load_errors, and the others still load.
        """
        for entry_point in metadata.entry_points(group=group):
            try:
                loaded = entry_point.load()
                self.register(_as_plugin(entry_point.name, entry_point.value, loaded))
            except Exception as error:  # An entry point runs third-party import code.
                reason = f"{type(error).__name__}: {error}"
                self.load_errors[entry_point.name] = reason
                log.error(
                    "cannot load root-cause plugin entry point",
                    extra={"plugin": entry_point.name, "reference": entry_point.value, "error": reason},
                )

    def get(self, name: str) -> PythonPlugin | None:
        return self._plugins.get(name)

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def __contains__(self, name: object) -> bool:
        return name in self._plugins


def _as_plugin(name: str, reference: str, loaded: Any) -> PythonPlugin:
    if isinstance(loaded, PythonPlugin):
        return loaded if loaded.name == name else dataclasses.replace(loaded, name=name)
    if callable(loaded):
        return PythonPlugin(name, loaded, reference)
    raise KdiagError(f"entry point {reference} is a {type(loaded).__name__}, not a plugin function")


class InlineCall:
    """Runs a PythonPlugin in a new daemon thread of this process and waits up to the timeout."""

    kind = INLINE

    def __init__(self, plugin: PythonPlugin) -> None:
        self.plugin = plugin
        self.name = plugin.name

    def call(self, context: DiagnosisContext, inputs: Mapping[str, Finding], timeout_seconds: float) -> Outcome:
        finished, result, error = call_in_thread(self.name, lambda: self.plugin.function(context, inputs), timeout_seconds)
        if not finished:
            return timed_out(self.name, timeout_seconds)
        if error is not None:
            return failed_by_exception(self.name, error)
        return outcome_of(self.name, result)


def call_in_thread(name: str, function: Callable[[], Any], timeout_seconds: float) -> tuple[bool, Any, BaseException | None]:
    """Run function in a new daemon thread and wait up to timeout_seconds.

    Returns (finished, result, exception). When it did not finish, the thread keeps running until
    function returns, because Python cannot stop a thread, and the caller must not wait for it.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = function()
        except BaseException as error:  # noqa: BLE001  # A plugin's SystemExit must become a FAILED finding too.
            box["error"] = error

    thread = threading.Thread(target=target, name=f"rootcause-plugin-{name}", daemon=True)
    thread.start()
    thread.join(timeout_seconds)
    if thread.is_alive():
        log.warning("root-cause plugin timed out and keeps its thread", extra={"plugin": name, "timeoutSeconds": timeout_seconds})
        return False, None, None
    return True, box.get("result"), box.get("error")


def outcome_of(plugin_name: str, result: Any) -> Outcome:
    """Turn what a plugin returned into an Outcome: OK with its values, or FAILED for invalid output."""
    try:
        values = check_values(result)
    except InvalidOutput as error:
        return failed(plugin_name, f"returned invalid output: {error}")
    return Outcome(OK, values)


def failed(plugin_name: str, problem: str) -> Outcome:
    return Outcome(FAILED, {}, shorten(f"plugin {plugin_name} {problem}", MAX_ERROR_LENGTH))


def failed_by_exception(plugin_name: str, error: BaseException) -> Outcome:
    if isinstance(error, PluginError):
        return failed(plugin_name, f"failed: {error}")
    return failed(plugin_name, f"raised {type(error).__name__}: {error}")


def timed_out(plugin_name: str, timeout_seconds: float) -> Outcome:
    return Outcome(TIMED_OUT, {}, f"plugin {plugin_name} timed out after {format_seconds(timeout_seconds)} s")


def format_seconds(seconds: float) -> str:
    return f"{seconds:g}"
