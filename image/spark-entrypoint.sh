#!/bin/bash
# Spark's Kubernetes entrypoint for the project image: the container command of the driver and executor pods
# that the Kubeflow Spark Operator starts (notellm/k8s_jobs.py sets it through the pod templates). Spark gives
# the pods the args `driver ...` or `executor ...` and the environment they need. The project's short version
# of Spark's own entrypoint (apache/spark, resource-managers/kubernetes/docker/src/main/dockerfiles/spark/
# entrypoint.sh): Spark here is the pyspark wheel, so SPARK_HOME is the pyspark package directory; the image's
# user has a passwd entry, so there is none to add. Any other command runs as given.
set -euo pipefail

spark_home() {  # $SPARK_HOME when it is a Spark home, else the installed pyspark package's directory
  if [ -n "${SPARK_HOME:-}" ] && [ -x "${SPARK_HOME}/bin/spark-submit" ]; then
    printf '%s\n' "${SPARK_HOME}"
  else
    "${PYTHON:-python3}" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'
  fi
}

need() {  # need ROLE VAR...: fail naming the variables Spark should have set and did not
  local role="$1" missing=() name
  shift
  for name in "$@"; do [ -n "${!name:-}" ] || missing+=("${name}"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "spark-entrypoint: the ${role} needs ${missing[*]} in the environment (Spark on Kubernetes sets them)" >&2
    exit 64
  fi
}

case "${1:-}" in
  driver)
    shift
    SPARK_HOME="$(spark_home)"
    export SPARK_HOME
    need driver SPARK_DRIVER_BIND_ADDRESS
    [ -z "${PYSPARK_PYTHON+x}" ] || export PYSPARK_PYTHON
    [ -z "${PYSPARK_DRIVER_PYTHON+x}" ] || export PYSPARK_DRIVER_PYTHON
    CMD=("${SPARK_HOME}/bin/spark-submit" --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}"
         --deploy-mode client "$@")
    ;;
  executor)
    shift
    SPARK_HOME="$(spark_home)"
    export SPARK_HOME
    need executor SPARK_EXECUTOR_MEMORY SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_APPLICATION_ID \
         SPARK_EXECUTOR_POD_IP SPARK_RESOURCE_PROFILE_ID SPARK_EXECUTOR_POD_NAME
    [ -z "${PYSPARK_PYTHON+x}" ] || export PYSPARK_PYTHON
    # The classpath, in Spark's order: its and Hadoop's configuration directories, SPARK_CLASSPATH (from
    # spark.executor.extraClassPath), SPARK_HOME's jars, SPARK_EXTRA_CLASSPATH, SPARK_DIST_CLASSPATH.
    classpath=""
    for part in "${SPARK_CONF_DIR:-${SPARK_HOME}/conf}" "${HADOOP_CONF_DIR:-}" "${SPARK_CLASSPATH:-}" \
                "${SPARK_HOME}/jars/*" "${SPARK_EXTRA_CLASSPATH:-}" "${SPARK_DIST_CLASSPATH:-}"; do
      [ -z "${part}" ] || classpath="${classpath:+${classpath}:}${part}"
    done
    # The JVM options arrive as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ...: keep their numeric order.
    java_opts=()
    while IFS= read -r name; do
      java_opts+=("${!name}")
    done < <(compgen -e | sed -n 's/^SPARK_JAVA_OPT_\([0-9][0-9]*\)$/\1 &/p' | sort -n | cut -d' ' -f2)
    CMD=("${JAVA_HOME:+${JAVA_HOME}/bin/}java" ${java_opts[@]+"${java_opts[@]}"}
         "-Xms${SPARK_EXECUTOR_MEMORY}" "-Xmx${SPARK_EXECUTOR_MEMORY}"
         -cp "${classpath}"
         org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
         --driver-url "${SPARK_DRIVER_URL}" --executor-id "${SPARK_EXECUTOR_ID}"
         --cores "${SPARK_EXECUTOR_CORES}" --app-id "${SPARK_APPLICATION_ID}"
         --hostname "${SPARK_EXECUTOR_POD_IP}" --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}"
         --podName "${SPARK_EXECUTOR_POD_NAME}")
    ;;
  *)
    CMD=("$@")
    ;;
esac

if [ "${#CMD[@]}" -eq 0 ]; then
  echo "usage: spark-entrypoint.sh driver ARGS... | executor | COMMAND ARGS..." >&2
  exit 64
fi
# tini (Spark's images run under it) reaps the Python workers' children when it is installed; else exec.
if command -v tini >/dev/null 2>&1; then
  exec tini -s -- "${CMD[@]}"
fi
exec "${CMD[@]}"
