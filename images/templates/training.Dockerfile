# srlm image "{{name}}" (stage {{key}}): {{description}}.
# Training family: the shared base (CUDA 13.0, Python 3.11, torch 2.14.0, srlm, kfp) + TRL,
# accelerate and DeepSpeed, pinned by images/constraints/training.txt (resolved together with
# the base: this layer adds packages and changes none).
# The base image built by `make images` first: <REGISTRY>/{{base_name}}:<VERSION> (images.json's
# registry and tag unless REGISTRY=/TAG= say otherwise; images/build.py passes both).
ARG REGISTRY={{registry}}
ARG VERSION={{version}}

# DeepSpeed is published as an sdist only: its wheel is built here (pure Python with
# DS_BUILD_OPS=0; DeepSpeed JIT-builds the ops a config asks for at run time).
FROM ${REGISTRY}/{{base_name}}:${VERSION} AS deepspeed-wheel
USER 0:0
COPY images/pip.sh images/constraints/training.txt /tmp/req/
RUN --mount=type=secret,id=ca-bundle,required=false \
    DS_BUILD_OPS=0 sh /tmp/req/pip.sh wheel --no-deps -c /tmp/req/training.txt --wheel-dir /wheels deepspeed

FROM ${REGISTRY}/{{base_name}}:${VERSION}
USER 0:0
# Triton (torch's compiled kernels) and DeepSpeed's JIT ops compile with the system C compiler
# at run time: gcc and the libc headers are a run-time dependency here, not leftover build tools.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=deepspeed-wheel /wheels /tmp/wheels
COPY images/pip.sh images/requirements/training.in images/constraints/training.txt /tmp/req/
RUN --mount=type=secret,id=ca-bundle,required=false \
    sh /tmp/req/pip.sh install --find-links /tmp/wheels --only-binary deepspeed -c /tmp/req/training.txt \
        -r /tmp/req/training.in \
    && rm -rf /tmp/req /tmp/wheels \
    && python -c "import trl, accelerate, deepspeed; print('trl', trl.__version__, 'deepspeed', deepspeed.__version__)"
ARG VERSION
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
