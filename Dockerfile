# Image for the kdiag worker and connectors; docker-compose.yml runs it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
RUN pip install . \
    && useradd --create-home --uid 10001 kdiag \
    && mkdir -p /app/var/state \
    && chown -R kdiag /app/var

# kdiag finds rules, schemas and its state directory relative to its source
# tree by default. After a non-editable install that tree is site-packages,
# so point them at the copy of the repository in /app.
ENV KDIAG_RULES_DIR=/app/rules \
    KDIAG_SCHEMAS_DIR=/app/schemas \
    KDIAG_STATE_DIR=/app/var/state

USER kdiag
CMD ["kdiag", "worker"]
