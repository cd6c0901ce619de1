# The metrobus image: every stop, the load generator and the seeder are
# `metrobus …` commands of this one image (see compose/docker-compose.yml).
#
#   docker build -t metrobus:local .
#   docker run --rm metrobus:local run --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build

# 1. The dependencies, in a layer of their own that is rebuilt only when
#    pyproject.toml changes: an empty stand-in package lets pip resolve and
#    install them before the source is copied.
COPY pyproject.toml README.md LICENSE ./
RUN mkdir -p src/metrobus \
    && touch src/metrobus/__init__.py \
    && pip install . \
    && rm -rf src

# 2. metrobus itself (no dev extras; the embedded broker of `metrobus dev` is
#    not needed when Kafka and Redis run as containers).
COPY src ./src
RUN pip install --no-deps --force-reinstall .

# 3. The pipeline definition and an unprivileged user to run it.
RUN groupadd --system --gid 10001 metrobus \
    && useradd --system --uid 10001 --gid metrobus --no-create-home \
       --home-dir /app --shell /usr/sbin/nologin metrobus
WORKDIR /app
COPY metrobus.toml /app/metrobus.toml
ENV METROBUS_CONFIG=/app/metrobus.toml
USER 10001:10001

# The dashboard, /stats and /healthz of `metrobus run STOP --http-port 5000`.
EXPOSE 5000
ENTRYPOINT ["metrobus"]
CMD ["--help"]
