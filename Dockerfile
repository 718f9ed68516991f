# wxgate sidecar image: `wxgate run` as an unprivileged user.
#
#   docker build -t wxgate .
#   docker run -p 8080:8080 -p 127.0.0.1:9090:9090 -e WECHAT_TOKEN=... -v wxgate-state:/var/lib/wxgate wxgate
#
# Configuration: /etc/wxgate/proxy.yaml (the image ships deploy/docker/proxy.yaml there; mount your own over it).
# Ports: 8080 callbacks, 9090 admin (/metrics, /healthz, /readyz: never published on every interface, as above
# on loopback only). State: /var/lib/wxgate (the embedded SQLite store; unused with a Redis store). Reload the
# configuration with `docker kill --signal HUP <container>`.

# The base is pinned to one Python patch release and Debian release; bump both stages together.
FROM python:3.12.12-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY addons ./addons
# Runtime dependencies only (no `test` extra), the way CI builds the package, into a venv the final stage copies.
RUN python -m venv /opt/wxgate \
    && /opt/wxgate/bin/pip install --no-cache-dir .

FROM python:3.12.12-slim-bookworm
RUN groupadd --system --gid 10001 wxgate \
    && useradd --system --uid 10001 --gid wxgate --home-dir /var/lib/wxgate --shell /usr/sbin/nologin wxgate \
    && install -d -o wxgate -g wxgate -m 0750 /var/lib/wxgate
COPY --from=build /opt/wxgate /opt/wxgate
COPY deploy/docker/proxy.yaml /etc/wxgate/proxy.yaml
# HOME is the state volume: mitmproxy keeps its (unused, generated) CA under ~/.mitmproxy, and the root
# filesystem can then be read-only.
ENV PATH=/opt/wxgate/bin:$PATH \
    HOME=/var/lib/wxgate \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/wxgate
VOLUME ["/var/lib/wxgate"]
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["wxgate", "-c", "/etc/wxgate/proxy.yaml"]
CMD ["run"]
