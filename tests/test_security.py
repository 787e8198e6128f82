"""Security: loading never unpickles (model directories, checkpoints, the served model), the manifests limit
every container Milvus runs too, no secret value is in the repository, local servers stay on loopback.

The container lock-down of our own pods and secrets-by-reference in the manifests are in test_manifests.py.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from test_manifests import TARGETS, build, one
from test_model_train import MODEL
from typer.testing import CliRunner

from notellm.cli import app
from notellm.errors import ConfigError, DataError
from notellm.model.bundle import build_model
from notellm.model.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from notellm.model.modeldir import load_model, save_model
from notellm.model_config import PromptConfig
from serving.local import check_bind

ROOT = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this makes the directory ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def plant(path: Path, marker: Path) -> None:
    """A pickle that runs code: torch's zip format for .pt/.bin, plain pickle otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".pt", ".bin"):
        torch.save({"weight": RunsCode(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(RunsCode(marker)))


def test_the_planted_payload_runs_when_unpickled(tmp_path):
    plant(tmp_path / "x.pkl", tmp_path / "ran")
    pickle.loads((tmp_path / "x.pkl").read_bytes())
    assert (tmp_path / "ran").is_dir()  # so its absence below means nothing was unpickled


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model(build_model(MODEL, PromptConfig()), tmp_path_factory.mktemp("m") / "model")


@pytest.mark.parametrize("name", ["model.pt", "tokenizer/vocab.pkl", "backbone/training_args.bin",
                                  "backbone/optimizer.PTH"])
def test_a_pickle_in_a_model_directory_is_refused_unopened(model_dir, tmp_path, name):
    model = shutil.copytree(model_dir, tmp_path / "model")
    plant(model / name, tmp_path / "ran")
    with pytest.raises(DataError, match="pickle") as err:
        load_model(model)
    assert err.value.file.endswith(Path(name).name) and not (tmp_path / "ran").exists()


def test_the_served_embedder_refuses_a_pickle_too(model_dir, tmp_path):
    from serving.embedder import NoteEmbedder

    storage = tmp_path / "mnt-models"  # KServe's storage initializer: the model directory inside a folder
    shutil.copytree(model_dir, storage / "current")
    plant(storage / "current" / "backbone" / "pytorch_model.bin", tmp_path / "ran")
    with pytest.raises(DataError, match="pickle"):
        NoteEmbedder("notellm-embedder", storage).load()
    assert not (tmp_path / "ran").exists()


def test_a_pickle_named_safetensors_is_not_unpickled(model_dir, tmp_path):
    model = shutil.copytree(model_dir, tmp_path / "model")
    plant(model / "head.safetensors", tmp_path / "ran")
    with pytest.raises(Exception, match="deserializing header"):
        load_model(model)
    assert not (tmp_path / "ran").exists()


def test_a_checkpoint_state_that_runs_code_is_refused(tmp_path):
    module = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    save_checkpoint(tmp_path, step=1, module=module, optimizer=optimizer, scheduler=scheduler, curve=[],
                    fingerprint="f", keep=1)
    (checkpoint,) = list_checkpoints(tmp_path)
    resume = dict(module=module, optimizer=optimizer, scheduler=scheduler, fingerprint="f")
    assert load_checkpoint(checkpoint, **resume).step == 1  # the genuine state loads
    torch.save({"optimizer": RunsCode(tmp_path / "ran")}, checkpoint / "state.pt")
    with pytest.raises(DataError, match="refusing to unpickle") as err:
        load_checkpoint(checkpoint, **resume)
    assert err.value.file.endswith("state.pt") and not (tmp_path / "ran").exists()


# --- manifests and repository ------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_milvus_container_has_cpu_and_memory_limits(target):
    spec = one(build(target), "Milvus", "notellm")["spec"]
    components = spec["components"]
    names = ["standalone"] if spec["mode"] == "standalone" else [
        "proxy", "mixCoord", "dataNode", "queryNode", "streamingNode"]
    for name in names:  # a component's own resources, else the shared ones
        resources = components.get(name, {}).get("resources") or components.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("limits", {})), f"{target}: milvus {name}"
    for name, dependency in spec["dependencies"].items():  # etcd and MinIO the operator deploys in-cluster
        if "inCluster" in dependency:
            limits = dependency["inCluster"]["values"].get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= set(limits), f"{target}: milvus dependency {name}"


def test_the_image_runs_as_a_numeric_non_root_user():
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    numeric = users and re.fullmatch(r"(\d+)(?::\d+)?", users[-1])  # uid[:gid], numeric: runAsNonRoot verifies it
    assert numeric and int(numeric.group(1)) != 0


_WORDS = r"(?:[A-Za-z0-9]+[_-])*"  # a key's leading words: AWS_, milvus_...
# a bare "token" or a credential one (not a tokenizer's pad_token / eos_token)
SECRET_KEY = (rf"{_WORDS}(?:password|passwd|secret|api[_-]?key|access[_-]?key|private[_-]?key)|"
              rf"(?:{_WORDS}(?:auth|access|api|bearer|refresh|session|milvus|hf|github)[_-])?token")
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"),
    "cloud or hub token": re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}|"
                                     r"\bgithub_pat_\w{30,}|\bxox[abprs]-[\w-]{10,}|\bhf_[A-Za-z0-9]{30,}|"
                                     r"\bsk-[A-Za-z0-9_-]{20,}|\bAIza[\w-]{35}"),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"$<{]+:[^\s/@'\"$<{]+@"),
    "literal secret value": re.compile(rf"(?i)\b(?:{SECRET_KEY})[\"']?\s*[:=]\s*[\"']?(?![$<{{%])"
                                       r"[A-Za-z0-9+/=_.~-]{8,}(?=[\"'\s,;]|$)", re.M),
}


def secrets_in(text: str) -> list[str]:
    return [f"{what}: {m.group(0)[:40]}" for what, pattern in SECRET_PATTERNS.items()
            for m in pattern.finditer(text)]


def test_the_secret_scanner_catches_values_and_passes_references():
    pw, key = "pass" + "word", "AK" + "IA" + "Q3EXAMPLEEXAMPLE"
    found = [secrets_in(s) for s in [
        f"{pw}: hunter2hunter2", f'MILVUS_TOKEN="{"x9" * 10}"', f"aws_access_key_id={key}",
        "uri: https://admin:" + "s3cr3t@milvus:19530", "-----BEGIN RSA " + "PRIVATE KEY-----"]]
    assert all(found), found
    assert not [secrets_in(s) for s in [
        f"{pw}: $MILVUS_PASSWORD", 'token="${MILVUS_TOKEN}"', f"{pw}=<your-{pw}>",
        "token = os.environ.get(x)", "pad_token = tokenizer.eos_token",
        "token_env: MILVUS_TOKEN", "secretKeyRef: {name: notellm-milvus, key: token}",
        "--from-literal=token=\"$MILVUS_TOKEN\"", "automountServiceAccountToken: false"] if secrets_in(s)]


def test_no_secret_values_in_the_repository():
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    problems = []
    for name in filter(None, listed):
        path = ROOT / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        problems += [f"{name}: {hit}" for hit in secrets_in(text)]
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(text):
                if isinstance(doc, dict) and doc.get("kind") == "Secret":
                    problems.append(f"{name}: a Secret object {doc['metadata'].get('name')}")
    assert not problems, problems


# --- local servers -------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_binds_need_no_flag(host):
    check_bind(host, allow_remote=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "notes.example.com"])
def test_other_binds_are_refused_without_the_flag(host):
    with pytest.raises(ConfigError, match="--allow-remote"):
        check_bind(host, allow_remote=False)


def test_notellm_serve_refuses_a_network_bind_unless_allowed(tmp_path, caplog):
    args = ["serve", "--model", str(tmp_path / "missing"), "--workspace", str(tmp_path),
            "--set", "serving.host=0.0.0.0"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "not a loopback address" in " ".join(refused.output.split())
    with caplog.at_level(logging.WARNING, logger="serving.local"):
        allowed = CliRunner().invoke(app, [*args, "--allow-remote"])
    # past the guard: it went on to load the model
    assert allowed.exit_code == 2 and "model directory not found" in " ".join(allowed.output.split())
    assert "reachable from the network" in caplog.text
