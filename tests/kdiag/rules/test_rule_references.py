"""Reference declarations: built-ins, extraction on corpus objects, reference states and reference conditions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kdiag.errors import RuleError
from kdiag.rules import (
    BUILTIN_REFERENCES,
    ExtractedReferences,
    ReferenceKey,
    ReferenceState,
    Rule,
    extract_references,
    parse_rules,
    reference_state,
)
from kdiag.rules.references import ExtractorGroup

CorpusLoader = Callable[[str], list[dict[str, Any]]]


def rule_with(references: list[Any], checks: list[Any] | None = None, kind: str = "Pod") -> Rule:
    body = {"resource": kind, "references": references, "checkField": checks or [{"field": ["metadata", "name"], "nilValue": False}]}
    (rule,) = parse_rules({"RefRule": body}, source="test")
    return rule


POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "api-0", "namespace": "shop"},
    "spec": {
        "nodeName": "node-7",
        "serviceAccountName": "api",
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "initContainers": [
            {"name": "migrate", "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}
        ],
        "containers": [
            {
                "name": "api",
                "env": [
                    {"name": "PLAIN", "value": "x"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api-token", "key": "token"}}},
                    {"name": "FEATURE", "valueFrom": {"secretKeyRef": {"name": "flags", "key": "beta", "optional": True}}},
                    {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
                ],
                "envFrom": [{"secretRef": {"name": "api-env"}}, {"configMapRef": {"name": "common", "optional": False}}],
            },
            {"name": "proxy", "envFrom": [{"secretRef": {"name": "proxy-env", "optional": True}}]},
        ],
        "volumes": [
            {"name": "certs", "secret": {"secretName": "api-tls", "items": [{"key": "tls.crt", "path": "crt"}, {"key": "tls.key", "path": "key"}]}},
            {"name": "config", "configMap": {"name": "api-config"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "api-data"}},
            {"name": "scratch", "emptyDir": {}},
            {
                "name": "bundle",
                "projected": {"sources": [{"secret": {"name": "bundle-secret"}}, {"configMap": {"name": "bundle-config", "items": [{"key": "ca.crt"}]}}]},
            },
        ],
    },
}


# Built-in declarations on a full pod


def test_pod_secrets() -> None:
    assert extract_references(BUILTIN_REFERENCES["PodSecrets"], POD) == [
        ReferenceKey("Secret", "shop", "api-tls", "tls.crt"),
        ReferenceKey("Secret", "shop", "api-tls", "tls.key"),
        ReferenceKey("Secret", "shop", "bundle-secret"),
        ReferenceKey("Secret", "shop", "api-token", "token"),
        ReferenceKey("Secret", "shop", "api-env"),
        ReferenceKey("Secret", "shop", "db", "password"),
        ReferenceKey("Secret", "shop", "registry-credentials"),
    ]


def test_pod_config_maps() -> None:
    assert extract_references(BUILTIN_REFERENCES["PodConfigMaps"], POD) == [
        ReferenceKey("ConfigMap", "shop", "api-config"),
        ReferenceKey("ConfigMap", "shop", "bundle-config", "ca.crt"),
        ReferenceKey("ConfigMap", "shop", "settings", "LEVEL"),
        ReferenceKey("ConfigMap", "shop", "common"),
    ]


def test_pod_claims_account_node() -> None:
    assert extract_references(BUILTIN_REFERENCES["PodPersistentVolumeClaims"], POD) == [ReferenceKey("PersistentVolumeClaim", "shop", "api-data")]
    assert extract_references(BUILTIN_REFERENCES["PodServiceAccount"], POD) == [ReferenceKey("ServiceAccount", "shop", "api")]
    assert extract_references(BUILTIN_REFERENCES["PodNode"], POD) == [ReferenceKey("Node", "", "node-7")]


def test_optional_references_left_out() -> None:
    names = {reference.name for reference in extract_references(BUILTIN_REFERENCES["PodSecrets"], POD)}
    assert "flags" not in names
    assert "proxy-env" not in names


def test_key_pairs_with_its_own_element() -> None:
    pod = {
        "kind": "Pod",
        "metadata": {"namespace": "a"},
        "spec": {
            "containers": [
                {"env": [{"valueFrom": {"secretKeyRef": {"name": "one", "key": "k1"}}}, {"valueFrom": {"secretKeyRef": {"name": "two", "key": "k2"}}}]},
                {"env": [{"valueFrom": {"secretKeyRef": {"name": "one", "key": "k3"}}}]},
            ]
        },
    }
    assert extract_references(BUILTIN_REFERENCES["PodSecrets"], pod) == [
        ReferenceKey("Secret", "a", "one", "k1"),
        ReferenceKey("Secret", "a", "two", "k2"),
        ReferenceKey("Secret", "a", "one", "k3"),
    ]


def test_secret_key_ref_without_key() -> None:
    pod = {"kind": "Pod", "metadata": {"namespace": "a"}, "spec": {"containers": [{"env": [{"valueFrom": {"secretKeyRef": {"name": "one"}}}]}]}}
    assert extract_references(BUILTIN_REFERENCES["PodSecrets"], pod) == [ReferenceKey("Secret", "a", "one")]


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"kind": "Pod"},
        {"kind": "Pod", "spec": None},
        {"kind": "Pod", "spec": {"volumes": "x", "containers": [None, 5, {"env": {"a": 1}}]}},
        {"kind": "Pod", "spec": {"volumes": [{"secret": {"secretName": 5}}, {"secret": {"secretName": ""}}]}},
        [],
        None,
    ],
)
def test_partial_objects_extract_nothing(obj: Any) -> None:
    for declaration in BUILTIN_REFERENCES.values():
        assert extract_references(declaration, obj) == []


def test_object_without_namespace_uses_default() -> None:
    pod = {"kind": "Pod", "spec": {"volumes": [{"persistentVolumeClaim": {"claimName": "data"}}]}}
    assert extract_references(BUILTIN_REFERENCES["PodPersistentVolumeClaims"], pod) == [ReferenceKey("PersistentVolumeClaim", "default", "data")]


# Corpus objects


def test_case_10_pod_refers_to_its_node(corpus_case: CorpusLoader) -> None:
    pod = corpus_case("10-init-createcontainerconfigerror-secret-missing.yaml")[0]
    assert extract_references(BUILTIN_REFERENCES["PodNode"], pod) == [ReferenceKey("Node", "", "10.0.0.150")]
    # The dump cut the pod's Environment section, so the Secret shows only in the Event message.
    assert extract_references(BUILTIN_REFERENCES["PodSecrets"], pod) == []


def test_case_19_ingress_backend(corpus_case: CorpusLoader) -> None:
    (ingress,) = corpus_case("19-ingress-backend-service-missing.yaml")
    assert extract_references(BUILTIN_REFERENCES["IngressServices"], ingress) == [ReferenceKey("Service", "default", "web")]
    # No defaultBackend is set, so default-http-backend is no reference.
    assert extract_references(BUILTIN_REFERENCES["IngressTLSSecrets"], ingress) == []


def test_case_20_ingress_tls_secret(corpus_case: CorpusLoader) -> None:
    ingress, secret, _ = corpus_case("20-ingress-tls-secret-not-found.yaml")
    (reference,) = extract_references(BUILTIN_REFERENCES["IngressTLSSecrets"], ingress)
    assert reference == ReferenceKey("Secret", "recommender", "rringresstls")
    # The Secret exists, so the reference is present: the fault is its type, not its absence.
    assert reference_state(reference, secret) is ReferenceState.PRESENT


def test_case_14_claim_without_class(corpus_case: CorpusLoader) -> None:
    claim = corpus_case("14-pvc-pending-no-storageclass.yaml")[0]
    assert extract_references(BUILTIN_REFERENCES["PVCStorageClass"], claim) == []
    claim_with_class = {**claim, "spec": {**claim["spec"], "storageClassName": "standard"}}
    assert extract_references(BUILTIN_REFERENCES["PVCStorageClass"], claim_with_class) == [ReferenceKey("StorageClass", "", "standard")]


def test_case_29_hpa_target(corpus_case: CorpusLoader) -> None:
    deployment, hpa = corpus_case("29-hpa-missing-cpu-request.yaml")[:2]
    assert extract_references(BUILTIN_REFERENCES["HPAScaleTarget"], hpa) == [ReferenceKey("Deployment", "default", "nginx")]
    assert deployment["metadata"]["name"] == "nginx"


def test_service_endpoints_same_name() -> None:
    service = {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"}}
    assert extract_references(BUILTIN_REFERENCES["ServiceEndpoints"], service) == [ReferenceKey("Endpoints", "shop", "web")]


def test_ingress_v1beta1_backends() -> None:
    ingress = {
        "kind": "Ingress",
        "metadata": {"namespace": "shop"},
        "spec": {"backend": {"serviceName": "fallback"}, "rules": [{"http": {"paths": [{"backend": {"serviceName": "web", "servicePort": 80}}]}}]},
    }
    assert extract_references(BUILTIN_REFERENCES["IngressServices"], ingress) == [
        ReferenceKey("Service", "shop", "web"),
        ReferenceKey("Service", "shop", "fallback"),
    ]


def test_rule_joins_declarations() -> None:
    rule = rule_with([{"name": "secrets", "builtin": "PodSecrets"}, {"name": "node", "builtin": "PodNode"}])
    references = extract_references(rule, POD)
    assert references[-1] == ReferenceKey("Node", "", "node-7")
    assert len(references) == len(set(references)) == 8


# Reference states


def test_reference_states() -> None:
    with_key = ReferenceKey("Secret", "shop", "db", "password")
    without_key = ReferenceKey("Secret", "shop", "db")
    secret = {"kind": "Secret", "data": {"user": "YQ=="}, "stringData": {"password": "x"}}
    assert reference_state(with_key, None) is ReferenceState.MISSING
    assert reference_state(with_key, secret) is ReferenceState.PRESENT
    assert reference_state(ReferenceKey("Secret", "shop", "db", "token"), secret) is ReferenceState.KEY_MISSING
    assert reference_state(without_key, {"kind": "Secret"}) is ReferenceState.PRESENT
    config_map = {"kind": "ConfigMap", "binaryData": {"blob": "AA=="}}
    assert reference_state(ReferenceKey("ConfigMap", "shop", "c", "blob"), config_map) is ReferenceState.PRESENT
    assert reference_state(ReferenceKey("ConfigMap", "shop", "c", "other"), {"kind": "ConfigMap", "data": None}) is ReferenceState.KEY_MISSING


# Declarations written in a rule


def test_custom_declaration_single_source() -> None:
    rule = rule_with([{"name": "claims", "kind": "PersistentVolumeClaim", "field": ["spec", "volumes", "[*]", "persistentVolumeClaim", "claimName"]}])
    assert extract_references(rule, POD) == [ReferenceKey("PersistentVolumeClaim", "shop", "api-data")]


def test_custom_declaration_namespace_path() -> None:
    binding = {"kind": "RoleBinding", "metadata": {"namespace": "shop"}, "subjects": [{"kind": "ServiceAccount", "name": "api", "namespace": "ops"}, {"kind": "ServiceAccount", "name": "web"}]}
    rule = rule_with(
        [{"name": "accounts", "kind": "ServiceAccount", "field": ["subjects", "[*]", "name"], "namespace": ["subjects", "[*]", "namespace"]}],
        kind="RoleBinding",
    )
    assert extract_references(rule, binding) == [ReferenceKey("ServiceAccount", "ops", "api"), ReferenceKey("ServiceAccount", "shop", "web")]


def test_custom_declaration_sources_and_kind_field() -> None:
    rule = rule_with(
        [
            {
                "name": "target",
                "kindField": ["spec", "targetRef", "kind"],
                "sources": [{"field": ["spec", "targetRef", "name"]}, {"field": ["spec", "fallbackRef", "name"]}],
            }
        ],
        kind="VerticalPodAutoscaler",
    )
    autoscaler = {"kind": "VerticalPodAutoscaler", "metadata": {"namespace": "shop"}, "spec": {"targetRef": {"kind": "StatefulSet", "name": "db"}, "fallbackRef": {"name": "db-2"}}}
    assert extract_references(rule, autoscaler) == [ReferenceKey("StatefulSet", "shop", "db"), ReferenceKey("StatefulSet", "shop", "db-2")]
    without_kind = {"kind": "VerticalPodAutoscaler", "spec": {"targetRef": {"name": "db"}}}
    assert extract_references(rule, without_kind) == []


def test_kind_field_fan_out_rejected() -> None:
    with pytest.raises(RuleError) as caught:
        rule_with([{"name": "owner", "kindField": ["metadata", "ownerReferences", "[*]", "kind"], "field": ["metadata", "ownerReferences", "[*]", "name"]}])
    assert caught.value.path == "references[0].kindField[2]"


def test_reference_conditions_parsed() -> None:
    rule = rule_with(
        [{"name": "secrets", "builtin": "PodSecrets"}],
        checks=[{"referenceMissing": "secrets"}, {"referenceKeyMissing": "secrets"}, {"referenceField": {"name": "secrets", "field": ["type"], "equalValue": ["Opaque"]}}],
    )
    operators = [(condition.operator, condition.reference) for condition in rule.check_fields]
    assert operators == [("missing", "secrets"), ("keyMissing", "secrets"), ("field", "secrets")]
    assert rule.uses_references
    assert rule.references[0].builtin == "PodSecrets"


def test_reference_field_context() -> None:
    rule = rule_with(
        [{"name": "secrets", "builtin": "PodSecrets"}],
        checks=[{"referenceField": {"name": "secrets", "field": ["type"], "equalValue": ["Opaque"]}}],
    )
    objects = {("Secret", "shop", "api-token"): {"kind": "Secret", "type": "Opaque"}}

    def resolve(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return objects.get((kind, namespace, name))

    match = rule.evaluate(POD, resolve)
    assert match is not None
    assert match.context == {"references.secrets[Secret shop/api-token].type": "Opaque"}


def test_reference_missing_context_names_object() -> None:
    rule = rule_with([{"name": "claims", "builtin": "PodPersistentVolumeClaims"}], checks=[{"referenceMissing": "claims"}])
    match = rule.evaluate(POD, lambda kind, namespace, name: None)
    assert match is not None
    assert match.context == {"references.claims": "PersistentVolumeClaim shop/api-data"}


def test_reference_key_missing_context_names_key() -> None:
    rule = rule_with([{"name": "secrets", "builtin": "PodSecrets"}], checks=[{"referenceKeyMissing": "secrets"}])
    match = rule.evaluate(POD, lambda kind, namespace, name: {"kind": kind, "data": {}})
    assert match is not None
    assert match.context == {"references.secrets": "Secret shop/api-tls key tls.crt"}


def test_reference_rule_without_references_quiet() -> None:
    rule = rule_with([{"name": "secrets", "builtin": "PodSecrets"}], checks=[{"referenceMissing": "secrets"}])
    bare = {"kind": "Pod", "metadata": {"name": "bare"}}
    assert rule.evaluate(bare, lambda kind, namespace, name: None) is None


# Extraction shared between rules


def test_extracted_references_shared_across_names() -> None:
    first = rule_with([{"name": "secrets", "builtin": "PodSecrets"}], checks=[{"referenceMissing": "secrets"}])
    second = rule_with([{"name": "credentials", "builtin": "PodSecrets"}], checks=[{"referenceMissing": "credentials"}])
    extracted = ExtractedReferences(POD)
    references = extracted.extract(first.references[0])
    assert references == extract_references(BUILTIN_REFERENCES["PodSecrets"], POD)
    assert extracted.extract(second.references[0]) is references


def test_extracted_references_keep_declarations_apart() -> None:
    extracted = ExtractedReferences(POD)
    secrets = extracted.extract(BUILTIN_REFERENCES["PodSecrets"])
    config_maps = extracted.extract(BUILTIN_REFERENCES["PodConfigMaps"])
    assert secrets == extract_references(BUILTIN_REFERENCES["PodSecrets"], POD)
    assert config_maps == extract_references(BUILTIN_REFERENCES["PodConfigMaps"], POD)


def test_evaluate_with_shared_extraction_matches_alone() -> None:
    rules = [
        rule_with([{"name": "secrets", "builtin": "PodSecrets"}], checks=[{"referenceMissing": "secrets"}]),
        rule_with([{"name": "secrets", "builtin": "PodSecrets"}], checks=[{"referenceKeyMissing": "secrets"}]),
        rule_with([{"name": "maps", "builtin": "PodConfigMaps"}], checks=[{"referenceMissing": "maps"}]),
    ]
    present = {("Secret", "shop", "db"), ("ConfigMap", "shop", "settings")}

    def resolve(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return {"kind": kind, "data": {}} if (kind, namespace, name) in present else None

    extracted = ExtractedReferences(POD)
    shared = [rule.evaluate(POD, resolve, extracted) for rule in rules]
    alone = [rule.evaluate(POD, resolve) for rule in rules]
    assert shared == alone
    assert all(match is not None for match in shared)


def test_evaluate_rejects_extraction_of_other_object() -> None:
    rule = rule_with([{"name": "secrets", "builtin": "PodSecrets"}], checks=[{"referenceMissing": "secrets"}])
    with pytest.raises(ValueError, match="another object"):
        rule.evaluate(POD, lambda kind, namespace, name: None, ExtractedReferences(dict(POD)))


class SpecReadCounter(dict):  # type: ignore[type-arg]
    """A pod whose reads of spec are counted: a dict subclass, so the generated walk reads it through get."""

    def __init__(self, pod: dict[str, Any]) -> None:
        super().__init__(pod)
        self.spec_reads = 0

    def get(self, key: str, default: Any = None) -> Any:
        if key == "spec":
            self.spec_reads += 1
        return super().get(key, default)


POD_DECLARATIONS = [BUILTIN_REFERENCES[name] for name in ("PodSecrets", "PodConfigMaps", "PodPersistentVolumeClaims", "PodServiceAccount", "PodNode")]


def test_extractor_group_walks_once() -> None:
    group = ExtractorGroup(declaration.extractor for declaration in POD_DECLARATIONS)
    pod = SpecReadCounter(POD)
    found = group.extract(pod)
    assert pod.spec_reads == 1
    for declaration in POD_DECLARATIONS:
        assert found[declaration.extractor] == extract_references(declaration, POD)


def test_extractor_group_fills_extracted_references() -> None:
    group = ExtractorGroup(declaration.extractor for declaration in POD_DECLARATIONS)
    pod = SpecReadCounter(POD)
    extracted = ExtractedReferences(pod, group)
    secrets = extracted.extract(BUILTIN_REFERENCES["PodSecrets"])
    claims = extracted.extract(BUILTIN_REFERENCES["PodPersistentVolumeClaims"])
    assert pod.spec_reads == 1
    assert secrets == extract_references(BUILTIN_REFERENCES["PodSecrets"], POD)
    assert claims == [ReferenceKey("PersistentVolumeClaim", "shop", "api-data")]


def test_extractor_group_outside_declaration_alone() -> None:
    group = ExtractorGroup([BUILTIN_REFERENCES["PodSecrets"].extractor])
    extracted = ExtractedReferences(POD, group)
    config_maps = extracted.extract(BUILTIN_REFERENCES["PodConfigMaps"])
    assert config_maps == extract_references(BUILTIN_REFERENCES["PodConfigMaps"], POD)


@pytest.mark.parametrize("obj", [None, [POD], "Pod"], ids=["null", "list", "string"])
def test_extractor_group_non_mapping_empty(obj: Any) -> None:
    group = ExtractorGroup(declaration.extractor for declaration in POD_DECLARATIONS)
    assert group.extract(obj) == {declaration.extractor: [] for declaration in POD_DECLARATIONS}
