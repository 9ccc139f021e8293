"""The rule engine: rule documents, their validation, and evaluation against Kubernetes objects.

A rule document maps rule names to rule bodies::

    PodSidecarNotReady:
      duration: 300            # seconds the checks must keep holding; default 0
      resource: Pod            # the object's kind, matched exactly
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
  a mapping, makes the value absent.
- Values compare as strings. A string is used as it is, a boolean becomes "true" or "false", a
  number its JSON text (1, 1.5), null and absent become "", and a mapping or list becomes compact
  JSON with sorted keys.
- ``equalValue`` holds if the string form equals one of the listed strings. ``notEqualValue`` holds
  if it equals none of them, so an absent field ("") does not satisfy ``notEqualValue: [""]``.
  ``nilValue: true`` holds if the value is absent or null, ``nilValue: false`` if it is present and
  not null. A condition with several operators needs all of them to hold, and a condition with
  none is invalid.
- ``subIdentifierName``, ``subIdentifierValue`` and ``subField`` select elements of a list.
  ``field`` must lead to a list. The selected elements are its map elements whose
  ``subIdentifierName`` value, in string form, is one of ``subIdentifierValue``. The condition
  holds if the ``subField`` value of any selected element satisfies the operators. When no element
  is selected, the operators are tested on an absent value.
- kdiag extension: when ``subIdentifierValue`` is omitted, every map element of the list is
  selected, so a rule can match any container. ``subIdentifierName`` then only names the element in
  Match.context.

Match.context maps the display path of each checkField to the string form of the value found, for
example ``status.containerStatuses[name=sidecar].ready`` -> ``"false"``. For a list condition the
path names the element that satisfied it by its identifier, or by its index when the element has
no identifier.

Files: ``.json`` files hold one document, and ``.yaml`` or ``.yml`` files may hold several. Unknown
keys, wrong types, a negative duration, an empty ``field``, empty operator lists, and rule names
that are not non-blank strings are rejected with RuleError.
"""

from kdiag.rules.conditions import FieldCondition
from kdiag.rules.engine import Match, Rule, RuleSet
from kdiag.rules.loader import load_rule_file, load_rules
from kdiag.rules.parser import parse_rules

__all__ = [
    "FieldCondition",
    "Match",
    "Rule",
    "RuleSet",
    "load_rule_file",
    "load_rules",
    "parse_rules",
]
