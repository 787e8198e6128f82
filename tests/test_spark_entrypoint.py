"""image/spark-entrypoint.sh, the command of the SparkApplication's driver and executor pods, run here outside
the image: the commands it builds (a fake ``java`` and ``spark-submit`` that print their argv), the pass-through,
the missing-environment error, and with the installed pyspark and Java the real executor backend and driver;
and the rendered SparkApplication that makes it the pods' command. The Dockerfile puts the script at
``notellm.k8s_jobs.SPARK_ENTRYPOINT``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from notellm.k8s_jobs import SPARK_CONTAINERS, SPARK_ENTRYPOINT, Shared, cuda_tag, spark_application

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "image" / "spark-entrypoint.sh"
PRINT_ARGV = f"#!{sys.executable}\nimport json, os, sys\nprint(json.dumps({{'argv': sys.argv, 'spark_home': os.environ.get('SPARK_HOME')}}))\n"
EXECUTOR_ENV = {"SPARK_EXECUTOR_MEMORY": "3g", "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@drv-svc:7078",
                "SPARK_EXECUTOR_ID": "4", "SPARK_EXECUTOR_CORES": "2", "SPARK_APPLICATION_ID": "spark-abc",
                "SPARK_EXECUTOR_POD_IP": "10.1.2.3", "SPARK_RESOURCE_PROFILE_ID": "0",
                "SPARK_EXECUTOR_POD_NAME": "notellm-mine-abc-exec-4"}


def _fake(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PRINT_ARGV)
    path.chmod(0o755)
    return path


def _run(args: list[str], env: dict[str, str], path: list[Path]) -> subprocess.CompletedProcess[str]:
    """The script with a clean environment: no SPARK_* or JAVA_HOME from this machine, PATH = ``path`` + system."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_", "JAVA_", "HADOOP_"))}
    base["PATH"] = os.pathsep.join([*map(str, path), "/usr/bin", "/bin"])
    return subprocess.run(["bash", str(SCRIPT), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=120)


def test_the_script_is_executable_bash_with_valid_syntax() -> None:
    assert os.access(SCRIPT, os.X_OK) and SCRIPT.read_text().startswith("#!/bin/bash\n")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SCRIPT)], check=True)


def test_executor_runs_the_kubernetes_executor_backend(tmp_path: Path) -> None:
    home = tmp_path / "spark"
    _fake(home / "bin" / "spark-submit")
    java = _fake(tmp_path / "jdk" / "bin" / "java")
    env = {**EXECUTOR_ENV, "SPARK_HOME": str(home), "SPARK_CONF_DIR": "/opt/spark/conf",
           "SPARK_JAVA_OPT_10": "-Dspark.driver.port=7078", "SPARK_JAVA_OPT_2": "-Dspark.app.id=spark-abc",
           "SPARK_JAVA_OPT_0": "-Xss4m", "SPARK_JAVA_OPT_X": "-Dignored", "SPARK_EXTRA_CLASSPATH": "/extra/*"}
    out = json.loads(_run(["executor"], env, [java.parent]).stdout)
    argv = out["argv"][1:]
    assert argv[:5] == ["-Xss4m", "-Dspark.app.id=spark-abc", "-Dspark.driver.port=7078", "-Xms3g", "-Xmx3g"]
    assert argv[5:7] == ["-cp", f"/opt/spark/conf:{home}/jars/*:/extra/*"]
    assert argv[7:] == ["org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend",
                        "--driver-url", "spark://CoarseGrainedScheduler@drv-svc:7078", "--executor-id", "4",
                        "--cores", "2", "--app-id", "spark-abc", "--hostname", "10.1.2.3",
                        "--resourceProfileId", "0", "--podName", "notellm-mine-abc-exec-4"]
    assert out["spark_home"] == str(home)
    # JAVA_HOME wins over PATH; without SPARK_CONF_DIR the classpath starts with SPARK_HOME/conf
    other = _fake(tmp_path / "other-jdk" / "bin" / "java")
    env = {**EXECUTOR_ENV, "SPARK_HOME": str(home), "JAVA_HOME": str(other.parent.parent)}
    out = json.loads(_run(["executor"], env, [java.parent]).stdout)
    assert out["argv"][0] == str(other) and out["argv"][4] == f"{home}/conf:{home}/jars/*"


def test_executor_without_spark_home_uses_the_pyspark_package(tmp_path: Path) -> None:
    pyspark = pytest.importorskip("pyspark")
    java = _fake(tmp_path / "bin" / "java")
    result = _run(["executor"], dict(EXECUTOR_ENV), [Path(sys.executable).parent, java.parent])
    assert json.loads(result.stdout)["spark_home"] == str(Path(pyspark.__file__).parent), result.stderr


def test_driver_submits_in_client_mode_on_the_bind_address(tmp_path: Path) -> None:
    home = tmp_path / "spark"
    _fake(home / "bin" / "spark-submit")
    args = ["--properties-file", "/opt/spark/conf/spark.properties", "--class",
            "org.apache.spark.deploy.PythonRunner", "local:///app/notellm/mining_spark.py", "--events", "x y"]
    out = json.loads(_run(["driver", *args], {"SPARK_HOME": str(home), "SPARK_DRIVER_BIND_ADDRESS": "10.9.8.7"},
                          []).stdout)
    assert out["argv"] == [str(home / "bin" / "spark-submit"), "--conf", "spark.driver.bindAddress=10.9.8.7",
                           "--deploy-mode", "client", *args]


def test_missing_environment_is_named_and_other_commands_pass_through(tmp_path: Path) -> None:
    home = tmp_path / "spark"
    _fake(home / "bin" / "spark-submit")
    result = _run(["executor"], {"SPARK_HOME": str(home), "SPARK_EXECUTOR_MEMORY": "1g"}, [])
    assert result.returncode == 64
    assert "the executor needs SPARK_DRIVER_URL SPARK_EXECUTOR_ID" in result.stderr and "MEMORY" not in result.stderr
    result = _run(["driver"], {"SPARK_HOME": str(home)}, [])
    assert result.returncode == 64 and "SPARK_DRIVER_BIND_ADDRESS" in result.stderr
    result = _run(["printf", "%s|", "notellm", "--help", "a b"], {}, [])
    assert result.returncode == 0 and result.stdout == "notellm|--help|a b|"
    assert _run([], {}, []).returncode == 64


def _real_spark() -> tuple[Path, Path]:
    pytest.importorskip("pyspark")
    java = shutil.which("java")
    if java is None:
        pytest.skip("no Java runtime")
    return Path(sys.executable).parent, Path(java).parent


@pytest.mark.slow
def test_real_executor_backend_loads_and_calls_the_driver_url() -> None:
    """With the pyspark wheel's jars and a real JVM, the backend starts and dials the driver (refused here)."""
    path = _real_spark()
    env = {**EXECUTOR_ENV, "SPARK_EXECUTOR_MEMORY": "512m",
           "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@127.0.0.1:9", "SPARK_EXECUTOR_POD_IP": "127.0.0.1"}
    result = _run(["executor"], env, list(path))
    assert result.returncode != 0
    assert "KubernetesExecutorBackend: Started daemon" in result.stderr, result.stderr[-2000:]
    assert "Failed to connect to /127.0.0.1:9" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_real_driver_runs_a_pyspark_program(tmp_path: Path) -> None:
    """The driver command with the pyspark wheel's spark-submit: a Python program on a local master."""
    path = _real_spark()
    program = tmp_path / "count.py"
    program.write_text("import sys\nfrom pyspark.sql import SparkSession\n"
                       "s = SparkSession.builder.getOrCreate()\n"
                       "print('COUNT', s.range(int(sys.argv[1])).count(), s.conf.get('spark.driver.bindAddress'))\n"
                       "s.stop()\n")
    result = _run(["driver", "--master", "local[1]", "--conf", "spark.ui.enabled=false", str(program), "7"],
                  {"SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}, list(path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "COUNT 7 127.0.0.1" in result.stdout


def test_the_spark_application_starts_its_pods_with_the_entrypoint() -> None:
    app = spark_application("notellm-mine-abc", "notellm", "reg/notellm:1", Shared("c"), events="e", out="o",
                            mining_json="{}")
    for role in ("driver", "executor"):
        (container,) = app["spec"][role]["template"]["spec"]["containers"]
        assert container == {"name": SPARK_CONTAINERS[role], "command": [SPARK_ENTRYPOINT]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"COPY image/spark-entrypoint.sh {SPARK_ENTRYPOINT}\n" in dockerfile
    assert "ENV SPARK_HOME=/opt/spark\n" in dockerfile and "pyspark.__file__))')\" /opt/spark" in dockerfile
    assert dockerfile.rstrip().endswith('CMD ["notellm", "--help"]') and "ENTRYPOINT" not in dockerfile


def test_cuda_tag_is_the_one_definition() -> None:
    from notellm.errors import ConfigError
    from pipelines import compile as compile_module

    assert compile_module.cuda_tag is cuda_tag and not hasattr(compile_module, "cuda_image")
    assert cuda_tag("reg/notellm:0.1.0") == "reg/notellm:0.1.0-cuda"
    assert cuda_tag("reg/notellm:0.1.0-cuda") == "reg/notellm:0.1.0-cuda"
    for bad in ("notellm", "reg/notellm@sha256:ab", "reg:5000/notellm"):
        with pytest.raises(ConfigError, match="REGISTRY/NAME:TAG"):
            cuda_tag(bad)
