FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The project (see .dockerignore for what stays out), installed as a regular package.
COPY . /src
RUN pip install /src && rm -rf /src

RUN useradd --system --uid 10001 --create-home --home-dir /home/taskshuttle \
        --shell /usr/sbin/nologin taskshuttle
USER taskshuttle
WORKDIR /home/taskshuttle

# docker-compose.yml gives each service its own command.
CMD ["consumer", "--help"]
