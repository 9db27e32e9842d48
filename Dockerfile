# The leadpulse worker: `leadpulse worker`, configured by LEADPULSE_* environment variables.
#   docker build -t leadpulse-worker .
#   docker run --rm -e LEADPULSE_KAFKA_BOOTSTRAP=kafka:9092 -e LEADPULSE_REDIS_URL=redis://redis:6379/0 \
#     -e LEADPULSE_WEB_HOST=0.0.0.0 -p 6066:6066 leadpulse-worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md* ./
COPY features ./features
COPY scoring ./scoring
COPY streams ./streams
# hiredis: redis-py's C reply parser (the worker reads large feature hashes every batch).
RUN pip install . hiredis \
 && useradd --system --uid 10001 --home-dir /app leadpulse

USER leadpulse
ENV LEADPULSE_WEB_HOST=0.0.0.0 \
    LEADPULSE_WEB_PORT=6066
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/health', timeout=4)"
# Exec form: the worker is PID 1 and gets SIGTERM for a clean stop.
CMD ["leadpulse", "worker"]
