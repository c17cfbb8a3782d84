# syntax=docker/dockerfile:1
# One image for every role: `docker run IMAGE receiver|assigner|syncer|relay|migrate|sim|run`.

FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies in their own layer, rebuilt only when pyproject.toml changes: install the
# project from a stub package to get its dependencies, then drop the stub.
COPY pyproject.toml ./
RUN mkdir services && touch services/__init__.py \
    && pip install . \
    && pip uninstall --yes ownersync \
    && rm -rf services build ownersync.egg-info

# Installed in place: the migrations are found next to the services package
# (services/common/db/engine.py, MIGRATIONS_DIR) and are not in the wheel, so the code must run
# from /app. The runtime stage copies /app and /opt/venv to the same paths.
COPY services/ services/
COPY migrations/ migrations/
RUN pip install --no-deps --editable . && rm -rf build ownersync.egg-info


FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    OWNERSYNC_HOST=0.0.0.0

RUN groupadd --system --gid 10001 ownersync \
    && useradd --system --uid 10001 --gid ownersync --create-home --home-dir /home/ownersync \
       --shell /usr/sbin/nologin ownersync

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app/services /app/services
COPY --from=builder /app/migrations /app/migrations
COPY deploy/docker/healthcheck.py /opt/ownersync/healthcheck.py

# A writable working directory: with no OWNERSYNC_DATABASE_URL the embedded default keeps its
# SQLite file in the working directory.
WORKDIR /home/ownersync
USER 10001:10001

# 8000: the receiver (and `run`); 9100: /healthz and /metrics of the workers.
EXPOSE 8000 9100

# The same check for every role: /healthz on the HTTP port or on the metrics port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/ownersync/healthcheck.py"]

ENTRYPOINT ["ownersync"]
CMD ["run"]
