# annvq REST service image: the package with its [server] extra, serving /data on port 8000.
#   docker build -t annvq .
#   docker run -p 127.0.0.1:8000:8000 -v annvq-data:/data annvq      (or: docker compose up)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /app
COPY pyproject.toml README.md ./
COPY annvq ./annvq
COPY server ./server
RUN pip install ".[server]" \
    && useradd --system --uid 10001 --no-create-home annvq \
    && mkdir -p /data \
    && chown annvq /data

# settings come from ANNVQ_* variables (python -m annvq_server --help lists them all)
ENV ANNVQ_DATA_DIR=/data \
    ANNVQ_HOST=0.0.0.0 \
    ANNVQ_PORT=8000
USER annvq
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
# SIGTERM makes the service checkpoint every index before it exits
STOPSIGNAL SIGTERM
CMD ["python", "-m", "annvq_server"]
