# The one StartupMonkey image: operator, collector, analyser and executor are subcommands.
# No image is built on the project's development and CI machines (no container engine there;
# docs/operations.md): tests/integration/test_image_install.py replays these COPY and pip
# install steps in a fresh virtualenv, and tests/unit/test_image.py checks the base, the user,
# the entrypoint, and that every command the chart and the operator run parses with the CLI.

# Build stage: a wheel and its dependencies (build tools stay here).
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY startupmonkey ./startupmonkey
COPY operator ./operator
COPY collector ./collector
COPY analyser ./analyser
COPY executor ./executor
RUN python -m venv /opt/startupmonkey \
 && /opt/startupmonkey/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/startupmonkey/bin/pip install --no-cache-dir .

# Final stage: the virtualenv only, run as a non-root user.
FROM python:3.11.11-slim-bookworm
COPY --from=build /opt/startupmonkey /opt/startupmonkey
RUN groupadd --gid 10001 startupmonkey \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin startupmonkey
ENV PATH=/opt/startupmonkey/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["startupmonkey"]
CMD ["--help"]
