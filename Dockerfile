# Production image: daphne serving config.asgi through config.server.
FROM python:3.11-slim

# Debug off: the server refuses to start without a strong DJANGO_SECRET_KEY.
ENV DJANGO_DEBUG=false \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer, so code changes do not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt \
    && useradd --system --uid 10001 --no-create-home --home-dir /app app

# The code and collected static files stay owned by root: the server cannot change them.
COPY . .
# Collecting needs settings to load, not a real secret: a throwaway one that only this step sees.
RUN DJANGO_SECRET_KEY="collectstatic-only-$(python -c 'import secrets; print(secrets.token_hex(24))')" \
    python manage.py collectstatic --noinput

USER 10001
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-m", "config.healthcheck", "--port", "8000"]

# Exec form: daphne is PID 1 and receives SIGTERM itself, so it closes every
# WebSocket with 1001 and cancels its agent runs before it exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "config.server"]
# --proxy-headers: behind the proxy, the client address comes from its X-Forwarded-For.
CMD ["-b", "0.0.0.0", "-p", "8000", "--proxy-headers"]
