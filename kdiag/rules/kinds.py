"""Kinds that a reference may name: the built-in Kubernetes API kinds that objects refer to by name."""

from __future__ import annotations

NAMESPACED_KINDS: frozenset[str] = frozenset(
    {
        "ConfigMap",
        "ControllerRevision",
        "CronJob",
        "DaemonSet",
        "Deployment",
        "Endpoints",
        "EndpointSlice",
        "Event",
        "HorizontalPodAutoscaler",
        "Ingress",
        "Job",
        "Lease",
        "LimitRange",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Pod",
        "PodDisruptionBudget",
        "PodTemplate",
        "ReplicaSet",
        "ReplicationController",
        "ResourceQuota",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    }
)

CLUSTER_SCOPED_KINDS: frozenset[str] = frozenset(
    {
        "APIService",
        "ClusterRole",
        "ClusterRoleBinding",
        "CSIDriver",
        "CSINode",
        "CustomResourceDefinition",
        "IngressClass",
        "MutatingWebhookConfiguration",
        "Namespace",
        "Node",
        "PersistentVolume",
        "PriorityClass",
        "RuntimeClass",
        "StorageClass",
        "ValidatingWebhookConfiguration",
        "VolumeAttachment",
    }
)

KNOWN_KINDS: frozenset[str] = NAMESPACED_KINDS | CLUSTER_SCOPED_KINDS

# Where a kind keeps the keys that a reference's key names: the keys of these maps.
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "Secret": ("data", "stringData"),
    "ConfigMap": ("data", "binaryData"),
}
