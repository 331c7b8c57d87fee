#!/bin/sh
# pip inside an image build: `sh /tmp/req/pip.sh install|wheel ARGS...` (a RUN with
# `--mount=type=secret,id=ca-bundle,required=false`).
# - Trust: a CA bundle given as the build secret "ca-bundle" (`--secret id=ca-bundle,src=FILE`,
#   e.g. the host's system bundle, which holds a TLS-inspecting proxy's CA beside the public ones)
#   is what pip trusts for this command. It is mounted, never copied: no layer keeps it.
# - CPU variant (SRLM_TORCH=cpu, set by the base image's TORCH build argument): the CUDA-only pins
#   (torch, triton, vllm, nvidia-*, cuda-*) are dropped from every -c/-r file, so the CPU torch the
#   base installed stays, and vLLM's CUDA build is left out.
set -eu
secret=${SRLM_CA_SECRET:-/run/secrets/ca-bundle}  # where RUN --mount=type=secret puts it
if [ -s "$secret" ]; then
    export PIP_CERT="$secret" SSL_CERT_FILE="$secret"
fi
if [ "${SRLM_TORCH:-cuda}" = cpu ]; then
    previous="" n=0
    for arg in "$@"; do
        shift
        value=$arg
        if [ "$previous" = -c ] || [ "$previous" = -r ]; then
            n=$((n + 1))
            value="/tmp/cpu-$n-$(basename "$arg")"
            grep -v -i -E '^(torch|triton|vllm|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' "$arg" > "$value" || true
        fi
        set -- "$@" "$value"
        previous=$arg
    done
fi
exec pip "$@"
