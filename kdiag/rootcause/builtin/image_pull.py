"""The image pull message classifier: why the kubelet cannot pull a container's image.

It reads the detailed messages of the subject pod's Warning Events and the waiting message of its
containers, and classifies each one by the first category whose patterns match, in this order:

1. no-space: "no space left on device" while pulling or unpacking layers.
2. rate-limited: the registry throttled the pull (toomanyrequests, HTTP 429).
3. not-found: the tag, manifest or repository does not exist. Checked before unauthorized because
   Docker's old message adds "this may be because there are no credentials on this request" to
   every failed pull, while the details name the missing tag ("Tag ... not found").
4. invalid-name: the image reference cannot be parsed.
5. unauthorized: the registry rejected the credentials or asked for some. Docker Hub returns
   "pull access denied ... repository does not exist or may require 'docker login'" for private
   and for missing repositories alike, and this counts as unauthorized.
6. network: DNS, TCP or TLS failures on the way to the registry.

Short summaries such as "Error: ErrImagePull" or "Back-off pulling image" carry no cause and are
ignored. The finding's category is the first category in the order above that any message has,
and unknown when none has one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from kdiag.rootcause.builtin import kube
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding
from kdiag.rootcause.plugins import plugin

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("no-space", (r"no space left on device",)),
    ("rate-limited", (r"toomanyrequests", r"[Tt]oo [Mm]any [Rr]equests", r"pull rate limit", r"status code 429", r"\b429 Too Many")),
    (
        "not-found",
        (
            r"[Tt]ag \S+ not found",
            r"manifest unknown",
            r"manifest for \S+ not found",
            r"failed to resolve reference \"[^\"]+\": [^ ]+: not found",
            r"[Ii]mage \S+ not found",
            r"repository \S+ not found",
            r"name unknown",
            r"404 Not Found",
        ),
    ),
    ("invalid-name", (r"InvalidImageName", r"invalid reference format", r"couldn't parse image reference")),
    (
        "unauthorized",
        (
            r"[Uu]nauthorized",
            r"[Aa]uthentication required",
            r"pull access denied",
            r"requested access to the resource is denied",
            r"insufficient_scope",
            r"authorization failed",
            r"403 Forbidden",
            r"no basic auth credentials",
        ),
    ),
    (
        "network",
        (
            r"no such host",
            r"i/o timeout",
            r"connection refused",
            r"connection reset by peer",
            r"network is unreachable",
            r"no route to host",
            r"TLS handshake timeout",
            r"Client\.Timeout exceeded",
            r"server misbehaving",
            r"x509: [^\"]*",
            r"dial tcp [^\"]*",
        ),
    ),
)
_COMPILED = tuple((category, tuple(re.compile(pattern) for pattern in patterns)) for category, patterns in CATEGORIES)
_PRIORITY = {category: index for index, (category, _) in enumerate(CATEGORIES)}
_ABOUT_IMAGES = re.compile(r"image|pull|register layer|manifest|registry", re.IGNORECASE)
_IMAGE = re.compile(r'[Ii]mage "([^"]+)"')
_CONTAINER_IN_SYNC = re.compile(r'failed to "StartContainer" for "([^"]+)"')
_FIELD_PATH_CONTAINER = re.compile(r"spec\.(?:initContainers|containers)\{([^}]+)\}")
_CLAUSE_END = re.compile(r'["\)\n]|\.\s')
MAX_MESSAGE_LENGTH = 500
MAX_DETAIL_LENGTH = 160


def classify_message(message: str) -> tuple[str, str] | None:
    """Return (category, detail) for a detailed pull message, or None when it names no cause.

    detail is the message from the matched words to the end of their clause (a quote, a closing
    bracket, a line end or ". "), at most MAX_DETAIL_LENGTH characters.
    """
    for category, patterns in _COMPILED:
        for pattern in patterns:
            found = pattern.search(message)
            if found:
                end = _CLAUSE_END.search(message, found.end())
                detail = message[found.start() : end.start() if end else len(message)]
                return category, detail[:MAX_DETAIL_LENGTH].strip()
    return None


@plugin("image-pull-classifier")
def classify_image_pull(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Classify why the subject pod's image pull fails, from its Events and container statuses."""
    subject = context.subject()
    candidates: list[tuple[str, str, str, str, str]] = []  # (message, source, container, image, node)
    for event in context.events():
        message = kube.event_text(event)
        if not message or not _ABOUT_IMAGES.search(message):
            continue
        involved = kube.mapping(event.get("involvedObject"))
        container = _match_group(_FIELD_PATH_CONTAINER, str(involved.get("fieldPath", ""))) or _match_group(_CONTAINER_IN_SYNC, message)
        host = str(kube.mapping(event.get("source")).get("host", ""))
        candidates.append((message, "event", container, _match_group(_IMAGE, message), host))
    if kube.is_pod(subject):
        node_name = str(kube.mapping(subject.get("spec")).get("nodeName", ""))
        for _, status in kube.container_statuses(subject):
            waiting = kube.mapping(kube.mapping(status.get("state")).get("waiting"))
            reason = str(waiting.get("reason", ""))
            message = str(waiting.get("message", ""))
            if reason == "InvalidImageName":
                message = f"InvalidImageName: {message}"
            if message and (reason in kube.IMAGE_PULL_WAITING_REASONS or reason in ("InvalidImageName", "ErrImageNeverPull")):
                image = _match_group(_IMAGE, message) or str(status.get("image", ""))
                candidates.append((message, "containerStatus", str(status.get("name", "")), image, node_name))

    best: tuple[int, str, str, tuple[str, str, str, str, str]] | None = None
    evidence: dict[str, int] = {}
    for candidate in candidates:
        classified = classify_message(candidate[0])
        if classified is None:
            continue
        category, detail = classified
        evidence[category] = evidence.get(category, 0) + 1
        priority = _PRIORITY[category]
        if best is None or priority < best[0]:
            best = (priority, category, detail, candidate)

    values = {"category": "unknown", "evidence": "0", "messages": str(len(candidates))}
    if best is not None:
        chosen = best[3]
    elif candidates:
        chosen = candidates[0]
    else:
        chosen = ("", "", "", "", "")
    message, source, container, image, node = chosen
    if best is not None:
        values.update(category=best[1], detail=best[2], evidence=str(evidence[best[1]]))
    image = image or _image_of_container(subject, container)
    node = node or str(kube.mapping(subject.get("spec")).get("nodeName", ""))
    values.update(
        message=message[:MAX_MESSAGE_LENGTH],
        source=source,
        container=container,
        image=image,
        registry=kube.image_registry(image),
        node=node,
    )
    return {key: value for key, value in values.items() if value}


def _match_group(pattern: re.Pattern[str], text: str) -> str:
    found = pattern.search(text)
    return found.group(1) if found else ""


def _image_of_container(subject: Mapping[str, object], container: str) -> str:
    if not kube.is_pod(subject):
        return ""
    if container:
        return str(kube.container_spec(subject, container).get("image", ""))
    failing = kube.image_pull_failing_containers(subject)
    if failing:
        return str(failing[0].get("image", "")) or str(kube.container_spec(subject, str(failing[0].get("name", ""))).get("image", ""))
    return ""
