# srlm image "{{name}}" (stage {{key}}): {{description}}.
# Generation family: the shared base (CUDA 13.0, Python 3.11, torch 2.14.0, srlm, kfp) + vLLM's
# CUDA build, pinned by images/constraints/generation.txt (vllm 0.33 pins torch==2.14.0 and
# transformers<5.21; the base already has both, so this layer adds packages and changes none).
# The base image built by `make images` first: <REGISTRY>/{{base_name}}:<VERSION> (images.json's
# registry and tag unless REGISTRY=/TAG= say otherwise; images/build.py passes both).
ARG REGISTRY={{registry}}
ARG VERSION={{version}}
FROM ${REGISTRY}/{{base_name}}:${VERSION}
USER 0:0
# Triton (vLLM's and torch's GPU kernels) compiles a small launcher with the system C compiler
# the first time a kernel runs: gcc and the libc headers are a run-time dependency of this
# image, not leftover build tools.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# A base built with TORCH=cpu (SRLM_TORCH=cpu) makes the CPU variant: no vLLM (its CUDA build needs
# CUDA torch); the stages run the transformers backend there.
COPY images/pip.sh images/requirements/generation.in images/constraints/generation.txt /tmp/req/
RUN --mount=type=secret,id=ca-bundle,required=false \
    sh /tmp/req/pip.sh install -c /tmp/req/generation.txt -r /tmp/req/generation.in \
    && rm -rf /tmp/req \
    && python -c "import torch, transformers, lm_eval; print('torch', torch.__version__)" \
    && if [ "$SRLM_TORCH" != cpu ]; then python -c "import vllm; print('vllm', vllm.__version__)"; fi
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
