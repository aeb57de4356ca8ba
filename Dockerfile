# OZG integration gateway — production image.
# Config, keys and data are volumes: nothing secret is baked into the image.
#   docker build -t ozg-gateway .
#   docker run -v $PWD/gateway.toml:/etc/gateway/gateway.toml:ro -v $PWD/certs:/etc/gateway/certs:ro \
#              -v gateway-data:/var/lib/gateway -p 8480:8480 ozg-gateway
# The base image is pinned by digest (python:3.11-slim when it was pinned): the same bytes on every
# build. To move on: docker buildx imagetools inspect python:3.11-slim, then replace both digests.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY gateway ./gateway
COPY plugins ./plugins
# Only the gateway and its bundled adapters (not the development companion in its own directory), with every
# dependency at the version in constraints.txt (reproducible image); PostgreSQL support included.
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint constraints.txt '.[postgresql]'

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /var/lib/gateway --shell /usr/sbin/nologin gateway \
 && mkdir -p /etc/gateway /var/lib/gateway \
 && chown gateway:gateway /var/lib/gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'ozg-gateway[postgresql]' && rm -rf /wheels
COPY schemas /opt/gateway/schemas
ENV GATEWAY_CONFIG=/etc/gateway/gateway.toml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER gateway
WORKDIR /var/lib/gateway
VOLUME ["/var/lib/gateway"]
EXPOSE 8480
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GATEWAY_PORT', '8480') + '/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["gateway", "run"]
