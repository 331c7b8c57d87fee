# srlm image "{{name}}" (stage {{key}}): {{description}}.
# Light family: no CUDA, no torch. A slim Python 3.11 image + srlm + kfp + the MLflow client
# (mlflow-skinny: these stages reach MLflow over HTTP only) + datasets/pyarrow, pinned by
# images/constraints/light.txt. The srlm modules these stages import need none of torch,
# transformers or vLLM (tests/test_images.py checks the imports).
# Both stages start from BASE: the official image, pinned by tag (for readers) and by
# multi-architecture index digest (what gets pulled); any Debian image with Python 3.11 and its
# venv module works (`make images-check` uses a locally made Debian bookworm). A CA bundle for a
# TLS-inspecting proxy: the build secret "ca-bundle" (images/pip.sh).
ARG BASE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${BASE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY images/pip.sh images/requirements/light.in images/constraints/light.txt /tmp/req/
RUN --mount=type=secret,id=ca-bundle,required=false \
    sh /tmp/req/pip.sh install -c /tmp/req/light.txt -r /tmp/req/light.in
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN --mount=type=secret,id=ca-bundle,required=false \
    sh /tmp/req/pip.sh install --no-deps /src \
    && python -c "from srlm import stages, tracking, model_registry, pairs, seed_data, oasst, modeldir; import kfp, mlflow"

FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/srlm \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface
# Same non-root user and writable directories as the CUDA images (see images/base/Dockerfile).
RUN groupadd --gid 10001 srlm \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/srlm --shell /usr/sbin/nologin srlm \
    && mkdir -p /cache /gcs /minio /s3 \
    && chown 10001:10001 /cache /gcs /minio /s3
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/srlm
# What differs between the light images (and between commits) comes last: every layer above is the
# same for all of them, so they share it in a registry and on a node, and a new commit rebuilds none.
ARG VERSION={{version}}
ARG SOURCE_URL=https://github.com/OWNER/srlm
ARG REVISION=unknown
LABEL org.opencontainers.image.title="{{name}}" \
      org.opencontainers.image.description="srlm {{key}} stage: {{description}}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV SRLM_STAGE={{key}}
USER 10001:10001
CMD ["srlm", "--help"]
