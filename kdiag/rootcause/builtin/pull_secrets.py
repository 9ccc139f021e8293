"""The pull secret check: do the pod's imagePullSecrets exist, with a registry credentials type and key?"""

from __future__ import annotations

from collections.abc import Mapping

from kdiag.rootcause.builtin import kube
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding
from kdiag.rootcause.plugins import plugin

# Secret type -> the key that contains the credentials.
PULL_SECRET_TYPES = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson", "kubernetes.io/dockercfg": ".dockercfg"}


@plugin("pull-secret-check")
def check_pull_secrets(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Check the pull secrets of the pod and of its ServiceAccount.

    status is unknown (the pod's spec is not known), none (no pull secret referenced), missing (a
    referenced Secret does not exist), wrong-type (a Secret is not of a registry credentials type),
    missing-key (the type's key is absent) or ok. The first problem in that order wins.
    """
    pod = context.subject()
    if not kube.is_pod(pod) or not kube.has_spec(pod):
        return {"status": "unknown", "detail": "the pod's spec is not known"}
    spec = kube.mapping(pod.get("spec"))
    namespace = kube.namespace_of(pod)
    account_name = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
    names = [str(entry.get("name", "")) for entry in kube.items(spec.get("imagePullSecrets"))]
    source = "pod"
    account = next((item for item in context.related.service_accounts if kube.name_of(item) == account_name), None)
    if not names and account is not None:
        names = [str(entry.get("name", "")) for entry in kube.items(account.get("imagePullSecrets"))]
        source = f"serviceAccount {account_name}"
    names = [name for name in names if name]
    values = {"serviceAccount": account_name, "serviceAccountKnown": str(account is not None).lower()}
    if not names:
        return {**values, "status": "none", "detail": "the pod and its known ServiceAccount reference no imagePullSecrets"}

    secrets = {kube.name_of(item): item for item in context.related.secrets if not namespace or kube.namespace_of(item) in ("", namespace)}
    missing = [name for name in names if name not in secrets]
    wrong_type = [f"{name} ({secrets[name].get('type', 'Opaque')})" for name in names if name in secrets and secrets[name].get("type") not in PULL_SECRET_TYPES]
    missing_key = [
        f"{name} (no {PULL_SECRET_TYPES[secrets[name]['type']]})"
        for name in names
        if name in secrets and secrets[name].get("type") in PULL_SECRET_TYPES and PULL_SECRET_TYPES[secrets[name]["type"]] not in (secrets[name].get("keys") or ())
    ]
    values.update(secrets=", ".join(names), source=source)
    if missing:
        return {**values, "status": "missing", "missing": ", ".join(missing), "detail": f"Secret {', '.join(missing)} does not exist in namespace {namespace or 'unknown'}"}
    if wrong_type:
        return {**values, "status": "wrong-type", "wrongType": ", ".join(wrong_type), "detail": f"Secret {', '.join(wrong_type)} is not of type kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg"}
    if missing_key:
        return {**values, "status": "missing-key", "missingKey": ", ".join(missing_key), "detail": f"Secret {', '.join(missing_key)} lacks its credentials key"}
    return {**values, "status": "ok", "detail": f"Secret {', '.join(names)} exists with a registry credentials type"}
