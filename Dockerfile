# medkit worker image: `docker build -t medkit .` then `docker run medkit` runs `medkit worker`;
# `docker run medkit serve --host 0.0.0.0` runs the gateway from the same image (it needs
# MEDKIT_DETECTOR_TOKEN and MEDKIT_OPERATOR_TOKEN; docs/production.md).
# Configured by environment: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, MEDKIT_TASK_QUEUE,
# MEDKIT_STATE_DIR and the TLS / API key variables in docs/production.md, plus the worker's own
# policy file, which it requires: mount it at /etc/medkit/policy.yaml (MEDKIT_CONFIG), e.g.
# `docker run -v "$PWD/policy.yaml:/etc/medkit/policy.yaml:ro" medkit`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
# PYTHONDONTWRITEBYTECODE keeps the image clean, but the workflow sandbox re-imports the
# workflow modules for every run: compile them once here (the worker user cannot write there).
RUN pip install . \
    && python -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/workflows" \
    && useradd --system --uid 10001 --home-dir /var/lib/medkit --shell /usr/sbin/nologin medkit \
    && mkdir -p /var/lib/medkit \
    && chown medkit:medkit /var/lib/medkit

ENV TEMPORAL_ADDRESS=localhost:7233 \
    TEMPORAL_NAMESPACE=default \
    MEDKIT_TASK_QUEUE=medkit \
    MEDKIT_STATE_DIR=/var/lib/medkit \
    MEDKIT_CONFIG=/etc/medkit/policy.yaml

USER medkit
WORKDIR /var/lib/medkit
VOLUME ["/var/lib/medkit"]

# The worker drains in-flight tasks for up to 30 s on SIGTERM; give it longer than that
# before SIGKILL (docker stop -t 45, compose stop_grace_period: 45s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["medkit"]
CMD ["worker"]
