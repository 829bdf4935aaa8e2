# One image for every role: `reactor api`, `reactor worker --provider NAME`, `reactor analytics forward`.
# compose.yaml and deploy/k8s/ choose the role by the command they pass.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package build reads is copied, so the image does not change when tests or docs do
# (README.md is the package's long description).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY workers ./workers
COPY shared ./shared
RUN pip install . && rm -rf /src

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
# Its home is the data directory: the signing key (single-box auth) and the usage spool that keeps
# usage records while Redis is unreachable.
RUN groupadd --system --gid 10001 reactor \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/reactor --create-home reactor
ENV REACTOR_DATA_DIR=/var/lib/reactor
WORKDIR /var/lib/reactor
USER 10001:10001

EXPOSE 8004
ENTRYPOINT ["reactor"]
CMD ["api"]
