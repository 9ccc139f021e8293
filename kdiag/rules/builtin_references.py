"""Built-in reference declarations, as data that the rule parser validates like a rule's own.

A rule uses one with ``references: [{name: secrets, builtin: PodSecrets}]``, and the rule's resource must
be the declaration's resource. Each source reads the name of a referenced object. key, optional and a
namespace path are read from the same list elements as the name. A reference whose optional value is
true is not extracted, because Kubernetes runs the pod without it. The paths follow the core/v1,
networking.k8s.io/v1 and autoscaling/v2 API types, plus the extensions/v1beta1 Ingress backend fields
that older clusters and dumps still use.
"""

from __future__ import annotations

from typing import Any

ANY = "[*]"

BUILTIN_REFERENCE_DOCUMENT: dict[str, dict[str, Any]] = {
    # Secrets a pod reads: volumes, projected volumes, env valueFrom, envFrom and
    # image pull secrets, for containers, init containers and ephemeral containers.
    "PodSecrets": {
        "resource": "Pod",
        "kind": "Secret",
        "sources": [
            {
                "field": ["spec", "volumes", ANY, "secret", "secretName"],
                "key": ["spec", "volumes", ANY, "secret", "items", ANY, "key"],
                "optional": ["spec", "volumes", ANY, "secret", "optional"],
            },
            {
                "field": ["spec", "volumes", ANY, "projected", "sources", ANY, "secret", "name"],
                "key": ["spec", "volumes", ANY, "projected", "sources", ANY, "secret", "items", ANY, "key"],
                "optional": ["spec", "volumes", ANY, "projected", "sources", ANY, "secret", "optional"],
            },
            {
                "field": ["spec", "containers", ANY, "env", ANY, "valueFrom", "secretKeyRef", "name"],
                "key": ["spec", "containers", ANY, "env", ANY, "valueFrom", "secretKeyRef", "key"],
                "optional": ["spec", "containers", ANY, "env", ANY, "valueFrom", "secretKeyRef", "optional"],
            },
            {
                "field": ["spec", "containers", ANY, "envFrom", ANY, "secretRef", "name"],
                "optional": ["spec", "containers", ANY, "envFrom", ANY, "secretRef", "optional"],
            },
            {
                "field": ["spec", "initContainers", ANY, "env", ANY, "valueFrom", "secretKeyRef", "name"],
                "key": ["spec", "initContainers", ANY, "env", ANY, "valueFrom", "secretKeyRef", "key"],
                "optional": ["spec", "initContainers", ANY, "env", ANY, "valueFrom", "secretKeyRef", "optional"],
            },
            {
                "field": ["spec", "initContainers", ANY, "envFrom", ANY, "secretRef", "name"],
                "optional": ["spec", "initContainers", ANY, "envFrom", ANY, "secretRef", "optional"],
            },
            {
                "field": ["spec", "ephemeralContainers", ANY, "env", ANY, "valueFrom", "secretKeyRef", "name"],
                "key": ["spec", "ephemeralContainers", ANY, "env", ANY, "valueFrom", "secretKeyRef", "key"],
                "optional": ["spec", "ephemeralContainers", ANY, "env", ANY, "valueFrom", "secretKeyRef", "optional"],
            },
            {
                "field": ["spec", "ephemeralContainers", ANY, "envFrom", ANY, "secretRef", "name"],
                "optional": ["spec", "ephemeralContainers", ANY, "envFrom", ANY, "secretRef", "optional"],
            },
            {"field": ["spec", "imagePullSecrets", ANY, "name"]},
        ],
    },
    # ConfigMaps a pod reads, from the same places as Secrets except image pull
    # secrets.
    "PodConfigMaps": {
        "resource": "Pod",
        "kind": "ConfigMap",
        "sources": [
            {
                "field": ["spec", "volumes", ANY, "configMap", "name"],
                "key": ["spec", "volumes", ANY, "configMap", "items", ANY, "key"],
                "optional": ["spec", "volumes", ANY, "configMap", "optional"],
            },
            {
                "field": ["spec", "volumes", ANY, "projected", "sources", ANY, "configMap", "name"],
                "key": ["spec", "volumes", ANY, "projected", "sources", ANY, "configMap", "items", ANY, "key"],
                "optional": ["spec", "volumes", ANY, "projected", "sources", ANY, "configMap", "optional"],
            },
            {
                "field": ["spec", "containers", ANY, "env", ANY, "valueFrom", "configMapKeyRef", "name"],
                "key": ["spec", "containers", ANY, "env", ANY, "valueFrom", "configMapKeyRef", "key"],
                "optional": ["spec", "containers", ANY, "env", ANY, "valueFrom", "configMapKeyRef", "optional"],
            },
            {
                "field": ["spec", "containers", ANY, "envFrom", ANY, "configMapRef", "name"],
                "optional": ["spec", "containers", ANY, "envFrom", ANY, "configMapRef", "optional"],
            },
            {
                "field": ["spec", "initContainers", ANY, "env", ANY, "valueFrom", "configMapKeyRef", "name"],
                "key": ["spec", "initContainers", ANY, "env", ANY, "valueFrom", "configMapKeyRef", "key"],
                "optional": ["spec", "initContainers", ANY, "env", ANY, "valueFrom", "configMapKeyRef", "optional"],
            },
            {
                "field": ["spec", "initContainers", ANY, "envFrom", ANY, "configMapRef", "name"],
                "optional": ["spec", "initContainers", ANY, "envFrom", ANY, "configMapRef", "optional"],
            },
            {
                "field": ["spec", "ephemeralContainers", ANY, "env", ANY, "valueFrom", "configMapKeyRef", "name"],
                "key": ["spec", "ephemeralContainers", ANY, "env", ANY, "valueFrom", "configMapKeyRef", "key"],
                "optional": ["spec", "ephemeralContainers", ANY, "env", ANY, "valueFrom", "configMapKeyRef", "optional"],
            },
            {
                "field": ["spec", "ephemeralContainers", ANY, "envFrom", ANY, "configMapRef", "name"],
                "optional": ["spec", "ephemeralContainers", ANY, "envFrom", ANY, "configMapRef", "optional"],
            },
        ],
    },
    # Claims a pod mounts. Ephemeral volumes (volumes[].ephemeral) create their
    # claim with the pod, so they are not references.
    "PodPersistentVolumeClaims": {
        "resource": "Pod",
        "kind": "PersistentVolumeClaim",
        "sources": [
            {"field": ["spec", "volumes", ANY, "persistentVolumeClaim", "claimName"]},
        ],
    },
    # The pod's service account. The ServiceAccount admission plugin fills in
    # "default" when the manifest omits it.
    "PodServiceAccount": {
        "resource": "Pod",
        "kind": "ServiceAccount",
        "sources": [
            {"field": ["spec", "serviceAccountName"]},
        ],
    },
    # The node the scheduler bound the pod to.
    "PodNode": {
        "resource": "Pod",
        "kind": "Node",
        "sources": [
            {"field": ["spec", "nodeName"]},
        ],
    },
    # Services an Ingress routes to: every path backend and the default backend.
    # No reference exists when defaultBackend is unset, whatever kubectl describe
    # prints for it.
    "IngressServices": {
        "resource": "Ingress",
        "kind": "Service",
        "sources": [
            {"field": ["spec", "rules", ANY, "http", "paths", ANY, "backend", "service", "name"]},
            {"field": ["spec", "defaultBackend", "service", "name"]},
            {"field": ["spec", "rules", ANY, "http", "paths", ANY, "backend", "serviceName"]},
            {"field": ["spec", "backend", "serviceName"]},
        ],
    },
    # TLS Secrets of an Ingress. The controller needs a kubernetes.io/tls Secret
    # with the keys tls.crt and tls.key.
    "IngressTLSSecrets": {
        "resource": "Ingress",
        "kind": "Secret",
        "sources": [
            {"field": ["spec", "tls", ANY, "secretName"]},
        ],
    },
    # The Endpoints object that the endpoints controller keeps for a Service with a
    # selector. It has the Service's name, and no addresses when the selector
    # matches no ready pod.
    "ServiceEndpoints": {
        "resource": "Service",
        "kind": "Endpoints",
        "sources": [
            {"field": ["metadata", "name"]},
        ],
    },
    # The StorageClass a claim requests, by field or by the beta annotation that
    # older manifests use. A claim without either gets the default StorageClass,
    # if the cluster has one, so it has no reference.
    "PVCStorageClass": {
        "resource": "PersistentVolumeClaim",
        "kind": "StorageClass",
        "sources": [
            {"field": ["spec", "storageClassName"]},
            {"field": ["metadata", "annotations", "volume.beta.kubernetes.io/storage-class"]},
        ],
    },
    # The workload an HPA scales. The kind comes from the object.
    "HPAScaleTarget": {
        "resource": "HorizontalPodAutoscaler",
        "kindField": ["spec", "scaleTargetRef", "kind"],
        "sources": [
            {"field": ["spec", "scaleTargetRef", "name"]},
        ],
    },
}
