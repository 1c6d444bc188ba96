# Starling homeserver image (docs/scaling.md). Build: docker build -t starling .
# Data (config, signing key, media, SQLite if used) lives in the /data volume.
#   docker run -e SERVER_NAME=example.org -v starling:/data -p 8008:8008 starling
# The first start writes /data/starling.yaml and a signing key (`generate` does only that).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 991 --user-group --home-dir /data starling \
    && mkdir -p /data && chown starling:starling /data

WORKDIR /opt/starling
COPY pyproject.toml README.md ./
COPY starling ./starling
COPY starling_client ./starling_client
RUN pip install . && rm -rf build *.egg-info

COPY contrib/docker/entrypoint.sh /usr/local/bin/starling-entrypoint
COPY contrib/docker/listeners.yaml /etc/starling/listeners.yaml

USER starling
WORKDIR /data
VOLUME ["/data"]
# 8008: client API (plain HTTP, behind a TLS proxy); 8448: federation.
EXPOSE 8008 8448
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8008/health', timeout=4)"
ENTRYPOINT ["starling-entrypoint"]
CMD ["serve"]
