# syntax=docker/dockerfile:1
# The operator image: `modelrollout operator run` by default, `modelrollout exporter run` for the exporter.
#   docker build -t ghcr.io/modelrollout/modelrollout:0.1.0 .
#
# Base image pinned by exact tag (Python patch release and Debian release). Pin by digest as well where
# the registry is reachable, e.g. --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
# (digest from `docker buildx imagetools inspect python:3.11.14-slim-bookworm`).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: install the package and its dependencies into a virtualenv ------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/modelrollout
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
# Not editable: the runtime stage gets the installed package, not the sources. Bytecode is compiled
# here because the runtime root filesystem is read-only.
RUN /opt/modelrollout/bin/pip install . \
 && /opt/modelrollout/bin/python -m compileall -q /opt/modelrollout

# --- runtime: the same base, the virtualenv, a numeric non-root user ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="modelrollout" \
      org.opencontainers.image.description="Kubernetes operator that rolls out ML model versions safely" \
      org.opencontainers.image.licenses="Apache-2.0"
# UID/GID 10001 match runAsUser/runAsGroup in deploy/ and the chart; no home, no login shell.
RUN groupadd --system --gid 10001 modelrollout \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin modelrollout
COPY --from=build /opt/modelrollout /opt/modelrollout
ENV PATH=/opt/modelrollout/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
# 8080 liveness, 9100 operator metrics, 9102 prediction exporter
EXPOSE 8080 9100 9102
ENTRYPOINT ["modelrollout"]
CMD ["operator", "run", "--liveness", "http://0.0.0.0:8080/healthz", "--metrics-address", "0.0.0.0", "--metrics-port", "9100", "--scrape-interval", "30s", "--gate-protocol", "v2"]
