# Tokenvault service image: `tokenvault serve` as an unprivileged user.
# Mount the settings file, TLS files, KEK and policy at /etc/tokenvault and pass the database
# DSN in TOKENVAULT_DATABASE_DSN (or whatever variable the settings' dsn_env names).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/tokenvault
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY vault ./vault
COPY keys ./keys
COPY clients ./clients
RUN pip install . \
    && useradd --system --no-create-home --shell /usr/sbin/nologin tokenvault

USER tokenvault
EXPOSE 8443
ENTRYPOINT ["tokenvault", "--log-format", "json"]
CMD ["serve", "--config", "/etc/tokenvault/config.toml"]
