"""The rule engine: rule documents, their validation, and evaluation against Kubernetes objects.

docs/rules.md is the full reference of the rule language. A rule document maps rule names to rule
bodies::

    PodSidecarNotReady:
      duration: 300            # seconds the checks must keep holding; default 0
      resource: Pod            # the object's kind, matched exactly
      durationFrom:            # optional: where the anomaly's start time is in the object
        field: [status, conditions]
        subIdentifierName: type
        subIdentifierValue: [ContainersReady]
        subField: [lastTransitionTime]
      filterField:             # optional: which objects the rule applies to
      - {field: [status, phase], equalValue: [Running]}
      - {field: [metadata, deletionTimestamp], nilValue: true}
      checkField:              # required, at least one: the anomaly itself
      - field: [status, containerStatuses]
        subIdentifierName: name
        subIdentifierValue: [sidecar]
        subField: [ready]
        equalValue: ["false"]

A rule matches an object when every filterField and every checkField condition holds.

Conditions:

- ``field`` is a list of map keys into the object. A missing key, or a value on the way that is not
  a mapping, makes the value absent. A ``"[*]"`` segment fans out over the elements of a list, and
  the condition holds if any reached value satisfies the operators, or every one with
  ``match: all`` (which needs at least one value).
- Operators: ``equalValue``, ``notEqualValue``, ``prefix``, ``substring`` and ``regex`` (Python
  ``re.search``) test the string form. ``nilValue`` (absent or null) and ``exists`` (key present,
  even with null) test presence. ``greaterThan``, ``greaterOrEqual``, ``lessThan`` and
  ``lessOrEqual`` compare numbers and Kubernetes quantities (500Mi, 100m). ``length`` compares the
  length of a string, list or map, for example ``length: {greaterThan: 0}``. A condition with
  several operators needs all of them to hold.
- Values compare as strings. A string is used as it is, a boolean becomes "true" or "false", a
  number its JSON text (1, 1.5), null and absent become "", and a mapping or list becomes compact
  JSON with sorted keys. ``notEqualValue: [""]`` is not satisfied by an absent field.
- ``subIdentifierName``, ``subIdentifierValue`` and ``subField`` select elements of a list.
  ``field`` must lead to a list. The selected elements are its map elements whose
  ``subIdentifierName`` value, in string form, is one of ``subIdentifierValue``, or every map
  element when ``subIdentifierValue`` is omitted. The condition holds if the ``subField`` value of
  any selected element satisfies the operators. When no element is selected, a condition without
  ``"[*]"`` and without ``match: all`` tests the operators on an absent value.

Rules may also declare ``references`` to other objects and test them with ``referenceMissing``,
``referenceKeyMissing`` and ``referenceField`` conditions. Rule.evaluate matches such a rule only
when it is given a resolver. ``every`` and ``jitter`` make a rule periodic; next_check_ms gives its
check times.

Match.context maps the display path of each checkField to the string form of the value found, for
example ``status.containerStatuses[name=sidecar].ready`` -> ``"false"``. For a list condition the
path names the element that satisfied it by its identifier, or by its index when the element has
no identifier or was reached through ``"[*]"``.

Files: ``.json`` files hold one document, and ``.yaml`` or ``.yml`` files may hold several. Invalid
rules are rejected with RuleError, which names the rule, the path inside it and the problem.
"""

from kdiag.rules.conditions import FieldCondition
from kdiag.rules.engine import DurationSource, Match, Rule, RuleSet, SharedResults
from kdiag.rules.loader import ValidationReport, load_rule_file, load_rules, validate_rule_paths
from kdiag.rules.parser import check_rules, parse_rules
from kdiag.rules.quantities import parse_quantity
from kdiag.rules.reference_parser import BUILTIN_REFERENCES
from kdiag.rules.references import (
    ExtractedReferences,
    ReferenceCondition,
    ReferenceDeclaration,
    ReferenceKey,
    ReferenceSource,
    ReferenceState,
    extract_references,
    reference_state,
)
from kdiag.rules.schedule import next_check_ms
from kdiag.rules.timestamps import parse_rfc3339_ms

__all__ = [
    "BUILTIN_REFERENCES",
    "DurationSource",
    "ExtractedReferences",
    "FieldCondition",
    "Match",
    "ReferenceCondition",
    "ReferenceDeclaration",
    "ReferenceKey",
    "ReferenceSource",
    "ReferenceState",
    "Rule",
    "RuleSet",
    "SharedResults",
    "ValidationReport",
    "check_rules",
    "extract_references",
    "load_rule_file",
    "load_rules",
    "next_check_ms",
    "parse_quantity",
    "parse_rfc3339_ms",
    "parse_rules",
    "reference_state",
    "validate_rule_paths",
]
