# The one StartupMonkey image: operator, collector, analyser and executor are subcommands.
# Built by `make image` (hack/build-image.sh): buildah, or docker where it exists. The RUN step
# has no network (buildah --network none): the wheels of every dependency are downloaded on
# the host beforehand into wheels/ of the build context, and pip installs from there only.
# BASE chooses the base image: a Python 3.11 Debian bookworm image with python3 and venv;
# hack/build-image.sh builds one locally with mmdebstrap when no registry is reachable.
# tests/integration/test_image_install.py replays these COPY and pip install steps in a fresh
# virtualenv, and tests/unit/test_image.py checks the base, the user, the entrypoint, and
# that every command the chart and the operator run parses with the CLI; tests/pods/ runs the
# built image on a real kubelet.
ARG BASE=python:3.11.11-slim-bookworm

# Build stage: a virtualenv with the project and its dependencies (build tools stay here).
# pip's bytecode carries the files' times, so it is removed, and compiled again checked by
# nothing (unchecked-hash): the same bytes every build, and a process starting on the read-only
# root (PYTHONDONTWRITEBYTECODE) loads it instead of compiling every import, which took about
# 2 CPU-seconds per start, enough for a CPU-starved pod to miss its probes.
FROM ${BASE} AS build
WORKDIR /src
COPY wheels /wheels
COPY pyproject.toml setup.py README.md ./
COPY startupmonkey ./startupmonkey
COPY operator ./operator
COPY collector ./collector
COPY analyser ./analyser
COPY executor ./executor
RUN python3 -m venv /opt/startupmonkey \
 && /opt/startupmonkey/bin/pip install --no-cache-dir --no-index --find-links /wheels . \
 && find /opt/startupmonkey -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/startupmonkey/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/startupmonkey/lib

# Final stage: the virtualenv only, run as a non-root user.
FROM ${BASE}
COPY --from=build /opt/startupmonkey /opt/startupmonkey
RUN groupadd --gid 10001 startupmonkey \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin startupmonkey
ENV PATH=/opt/startupmonkey/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["startupmonkey"]
CMD ["--help"]
