# fairfeed container image. Build and run: docs/operations.md ("Container").
#   docker build -t fairfeed:0.1.0 .
#   docker run --rm --shm-size=256m fairfeed:0.1.0
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: the package and its dependencies in a virtual environment ---------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fairfeed ./fairfeed
RUN python -m venv /opt/fairfeed \
    && /opt/fairfeed/bin/pip install . \
    && /opt/fairfeed/bin/pip uninstall --yes pip setuptools

# -- runtime: the virtual environment, a non-root user and a warm Numba cache -------------------
FROM ${PYTHON_IMAGE} AS runtime
# Kernels compiled for a generic x86-64 (or aarch64) CPU load on any node; a cache compiled for
# the build machine's CPU would be recompiled (~15-40 s) on every node of another CPU model.
ARG NUMBA_CPU_NAME=generic
ENV PATH=/opt/fairfeed/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CPU_NAME=${NUMBA_CPU_NAME} \
    NUMBA_CACHE_DIR=/opt/fairfeed/numba-cache \
    STATE_DIRECTORY=/var/lib/fairfeed \
    RUNTIME_DIRECTORY=/run/fairfeed
RUN groupadd --system --gid 10001 fairfeed \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fairfeed \
        --no-create-home --shell /usr/sbin/nologin fairfeed \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/fairfeed /run/fairfeed \
    && install -d -m 0755 /etc/fairfeed
COPY --from=build /opt/fairfeed /opt/fairfeed
RUN install -d -o 10001 -g 10001 -m 0755 /opt/fairfeed/numba-cache
USER 10001:10001
# Compile every kernel now, as the user that runs the daemon, into NUMBA_CACHE_DIR: a container
# starts by loading them (well under a second) instead of compiling.
RUN fairfeed warm-up
WORKDIR /var/lib/fairfeed
VOLUME ["/var/lib/fairfeed"]
# /metrics, /healthz, /readyz ([metrics] listen; the embedded default listens on 127.0.0.1).
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
# SIGTERM is the daemon's graceful stop (children in order, rings drained, Kafka flushed,
# within daemon.stop_timeout); the supervisor reaps every child, so it can be PID 1.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fairfeed"]
# The embedded default (simulated providers, a local broker); give yours with
#   docker run … fairfeed:0.1.0 run --no-live --config /etc/fairfeed/fairfeed.toml
CMD ["run", "--no-live"]
