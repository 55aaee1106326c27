# Hubbub server image: `docker build -t hubbub .` then
#   docker run -p 8765:8765 hubbub                      (embedded SQLite in the /data volume)
#   docker run -p 8765:8765 -e HUBBUB_POSTGRES_DSN=... -e HUBBUB_JWT_SECRET=... hubbub
# Settings are HUBBUB_* environment variables (`hubbub settings` lists them);
# docker-compose.yml runs two replicas with PostgreSQL, MongoDB and nginx.

# Build the wheels in a throwaway stage so the runtime image holds no sources or
# build tools. Everything comes from the hashed lock (requirements/app.txt), the
# same versions `make test` tests; Hubbub itself is built with the locked setuptools.
# The load-test tool (loadtest/, the hubbub-loadtest distribution) is not part of it.
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/app.txt requirements/app.txt
RUN pip wheel --wheel-dir /wheels --require-hashes --no-deps -r requirements/app.txt \
    && pip install --no-index --find-links /wheels --require-hashes --no-deps -r requirements/app.txt
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY server ./server
COPY storage ./storage
RUN pip wheel --wheel-dir /wheels --no-deps --no-build-isolation .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Hubbub and its locked dependencies (uvloop, asyncpg, pymongo, ...) from the
# wheels built above; --no-index: nothing is resolved or fetched here.
COPY --from=build /src/requirements/app.txt /tmp/app.txt
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels --require-hashes --no-deps -r /tmp/app.txt \
    && pip install --no-index --no-deps /wheels/hubbub-*.whl \
    && rm -rf /wheels /tmp/app.txt
RUN groupadd --system --gid 10001 hubbub \
    && useradd --system --uid 10001 --gid hubbub --home-dir /data --no-create-home --shell /usr/sbin/nologin hubbub \
    && mkdir /data \
    && chown hubbub:hubbub /data

# Listen on every interface of the container; the embedded store (used when no
# PostgreSQL DSN is set) and the dev JWT secret live in the /data volume.
ENV HUBBUB_HOST=0.0.0.0 \
    HUBBUB_PORT=8765 \
    HUBBUB_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
USER hubbub
EXPOSE 8765

# Liveness: the process answers plain HTTP on its WebSocket port.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('HUBBUB_PORT', '8765'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"]

# SIGTERM (docker stop, Kubernetes) closes connections with 1012 and exits 0.
STOPSIGNAL SIGTERM
CMD ["hubbub", "serve"]
