# The taskshuttle image: `producer` and `consumer` on PATH, run as an unprivileged user.
# BASE_IMAGE: any image with Python 3.11+ and pip on PATH (scripts/containers.sh passes one
# built from Debian's packages, for machines that reach no registry).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The project (see .dockerignore for what stays out), installed as a regular package: from the
# wheelhouse .wheels/ when the build context has one (scripts/containers.sh makes it, for
# containers that reach no package index), else from the index.
COPY . /src
RUN if [ -d /src/.wheels ]; then \
        pip install --no-index --find-links /src/.wheels taskshuttle; \
    else \
        pip install /src; \
    fi \
    && rm -rf /src

RUN useradd --system --uid 10001 --create-home --home-dir /home/taskshuttle \
        --shell /usr/sbin/nologin taskshuttle
USER taskshuttle
WORKDIR /home/taskshuttle

# docker-compose.yml gives each service its own command.
CMD ["consumer", "--help"]
