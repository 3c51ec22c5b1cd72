"""Deployment files: the Ray launcher YAML against Ray's schema, KubeRay manifests against the CRDs.

The CRD field paths come from k8s/schema/crd-fields.json (extracted from KubeRay's released
CRDs; source and version inside): every key a manifest sets under ``spec`` must exist there,
with the right type, and required fields must be present.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
LAUNCHER = ROOT / "cluster" / "aws-gpu.yaml"
CRD = json.loads((K8S / "schema" / "crd-fields.json").read_text())
SECRET_NAME = re.compile(r"SECRET|PASSW(OR)?D|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


MANIFESTS = sorted(K8S.rglob("*.yaml"))
ALL_DOCS = [(p.relative_to(K8S).as_posix(), d) for p in MANIFESTS for d in _docs(p)]


def _kind(kind: str) -> list[tuple[str, dict]]:
    return [(f, d) for f, d in ALL_DOCS if d["kind"] == kind]


# ----------------------------------------------------------------------------- CRD field check

_SCALARS = {"string": str, "boolean": bool, "number": (int, float), "integer": int}


def check(value, type_name: str, where: str, errors: list[str], rel: str = "") -> None:
    """Check ``value`` at path ``rel`` of the extracted schema ``type_name``; append problems."""
    paths, required = CRD["types"][type_name], CRD["required"].get(type_name, {})
    kind = paths[rel]
    if kind.startswith("@"):
        return check(value, kind[1:], where, errors)
    if kind == "any":
        return
    if kind.startswith("enum:"):
        if value not in kind[5:].split("|"):
            errors.append(f"{where}: {value!r} is not one of {kind[5:]}")
        return
    if kind == "int-or-string":
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
    elif kind in _SCALARS:
        ok = isinstance(value, _SCALARS[kind]) and (kind == "boolean" or not isinstance(value, bool))
    else:
        ok = isinstance(value, dict if kind == "object" else list)
    if not ok:
        errors.append(f"{where}: expected {kind}, got {type(value).__name__} {value!r}"[:200])
        return
    if kind == "array":
        for i, item in enumerate(value):
            check(item, type_name, f"{where}[{i}]", errors, rel + "[]")
    elif kind == "object":
        for field in required.get(rel, []):
            if field not in value:
                errors.append(f"{where}: required field {field!r} missing")
        for key, item in value.items():
            child = f"{rel}.{key}" if rel else key
            wildcard = f"{rel}.*" if rel else "*"
            if child in paths:
                check(item, type_name, f"{where}.{key}", errors, child)
            elif wildcard in paths:
                check(item, type_name, f"{where}.{key}", errors, wildcard)
            else:
                errors.append(f"{where}.{key}: no such field in the {type_name} CRD schema")


def test_checker_catches_typos_types_and_missing_fields():
    errors: list[str] = []
    spec = {"headGroupSpec": {"rayStartParams": {"num-gpus": 0}, "template": {"spec": {"containers": [
        {"name": "h", "image": "x", "resource": {}}]}}},
        "workerGroupSpecs": [{"groupName": "g", "template": {}}]}
    check(spec, "RayClusterSpec", "spec", errors)
    text = "\n".join(errors)
    assert "rayStartParams.num-gpus: expected string" in text
    assert "containers[0].resource: no such field" in text
    assert "required field 'minReplicas' missing" in text
    errors = []
    check({"entrypoint": "x", "submissionMode": "K8sMode"}, "RayJobSpec", "spec", errors)
    assert errors and "K8sJobMode" in errors[0]


def _params(docs):
    return [pytest.param(f, d, id=f"{f}:{d['kind']}") for f, d in docs]


@pytest.mark.parametrize("name, doc", _params((f, d) for f, d in ALL_DOCS if d["apiVersion"].startswith("ray.io")))
def test_kuberay_manifest_uses_only_crd_fields(name, doc):
    assert doc["apiVersion"] == CRD["apiVersion"], f"{name}: use {CRD['apiVersion']}"
    assert doc["kind"] in CRD["kinds"], f"{name}: kind {doc['kind']} has no extracted CRD"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    errors: list[str] = []
    check(doc["spec"], CRD["kinds"][doc["kind"]], f"{name}: spec", errors)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name, doc", _params(_kind("Deployment") + _kind("Job")))
def test_core_pod_templates_use_real_pod_fields(name, doc):
    errors: list[str] = []
    check(doc["spec"]["template"], "PodTemplateSpec", f"{name}: spec.template", errors)
    assert not errors, "\n".join(errors)


# ----------------------------------------------------------------------------- what the manifests say


def _pod_specs(doc: dict):
    """(label, pod spec, is_head) of every pod template in a RayCluster / RayJob."""
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    yield "head", spec["headGroupSpec"]["template"]["spec"], True
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"], False


def _containers(doc: dict):
    spec = doc.get("spec", {})
    templates = [spec["template"]] if "template" in spec else []
    templates += [{"spec": s} for _, s, _ in _pod_specs(doc)] if doc["kind"].startswith("Ray") else []
    for template in templates:
        yield from template["spec"].get("containers", [])


def test_gpu_groups_and_auth():
    ray_docs = _kind("RayCluster") + _kind("RayJob")
    assert {d["metadata"]["name"] for _, d in ray_docs} >= {"asaptrain", "asaptrain-train", "asaptrain-tune-hybrid",
                                                             "asaptrain-aggregate", "asaptrain-predict"}
    for name, doc in ray_docs:
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["rayVersion"] == "2.60.0", name
        for group, pod, is_head in _pod_specs(doc):
            limits = pod["containers"][0]["resources"]["limits"]
            if is_head:
                assert "nvidia.com/gpu" not in limits, f"{name} head asks for a GPU"
            else:
                assert limits["nvidia.com/gpu"] == "1", f"{name} {group}"
                assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    workers = {d["metadata"]["name"]: d["spec"]["rayClusterSpec"].get("workerGroupSpecs", [])
               for _, d in _kind("RayJob")}
    assert workers["asaptrain-train"] and workers["asaptrain-tune-hybrid"] and not workers["asaptrain-aggregate"]
    assert workers["asaptrain-predict"]


def test_no_plaintext_secrets_and_references_resolve():
    configmaps = {d["metadata"]["name"]: d["data"] for _, d in _kind("ConfigMap")}
    secrets = {d["metadata"]["name"]: d for f, d in _kind("Secret")}
    for f, d in _kind("Secret"):  # templates only: every value is <to be filled in>
        assert f.startswith("examples/"), f"{f}: a Secret outside examples/"
        assert all(re.fullmatch(r"<[^>]+>", v) for v in d["stringData"].values()), f
        assert "data" not in d
    assert "AWS_ENDPOINT_URL_S3" in configmaps["asaptrain-storage"]
    assert not any(SECRET_NAME.search(k) for data in configmaps.values() for k in data)
    checked = 0
    for f, doc in ALL_DOCS:
        for c in _containers(doc):
            for env in c.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    assert ref and "value" not in env, f"{f}: {env['name']} must come from a Secret"
                    assert ref["key"] in secrets[ref["name"]]["stringData"], f"{f}: {ref}"
                    checked += 1
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, f
        if doc["kind"] == "RayJob":
            runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
            assert not any(SECRET_NAME.search(k) for k in runtime_env.get("env_vars", {})), f
    assert checked >= 10


def test_images_are_pinned_and_agree_with_ray():
    for f, doc in ALL_DOCS:
        for c in _containers(doc):
            assert ":" in c["image"] and not c["image"].endswith(":latest"), f"{f}: {c['image']}"
    dockerfile = (K8S / "Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0-" in dockerfile
    assert yaml.safe_load(LAUNCHER.read_text())["docker"]["image"].startswith("rayproject/ray:2.60.0-")


def test_minio_service_matches_deployment_and_config():
    (_, deploy), (_, service) = _kind("Deployment")[0], _kind("Service")[0]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    endpoint = _kind("ConfigMap")[0][1]["data"]["AWS_ENDPOINT_URL_S3"]
    assert endpoint == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    claim = deploy["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim in {d["metadata"]["name"] for _, d in _kind("PersistentVolumeClaim")}


def test_bucket_job_creates_the_bucket(s3_endpoint):
    import boto3

    (_, job), = _kind("Job")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    env = {**os.environ, "ASAPTRAIN_STORE": "s3://made-by-job/store", "AWS_ENDPOINT_URL_S3": s3_endpoint}
    for expected in ("created bucket made-by-job", "bucket made-by-job exists"):  # and again: idempotent
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and expected in out.stdout, out.stderr
    boto3.client("s3", endpoint_url=s3_endpoint).head_bucket(Bucket="made-by-job")


def test_rayjob_entrypoints_name_real_scripts_flags_and_presets():
    from asaptrain.config.presets import PRESETS

    for f, doc in _kind("RayJob"):
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "python" and argv[1].startswith("/home/ray/asaptrain/jobs/"), f
        script = ROOT / argv[1].removeprefix("/home/ray/asaptrain/")
        assert script.is_file(), f"{f}: {script} missing"
        assert "COPY --chown=ray:users jobs/ jobs/" in (K8S / "Dockerfile").read_text()
        if "--preset" in argv:
            assert argv[argv.index("--preset") + 1] in PRESETS, f
        helptext = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                  timeout=120, cwd=ROOT).stdout
        for flag in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            assert flag in helptext, f"{f}: {script.name} has no {flag}"


def test_rayjobs_retry_and_a_retry_continues_the_work():
    """A lost head pod or driver retries the job (backoffLimit > 0, an integer field of the RayJob
    CRD); train and tune then continue their named run or sweep (--name, --resume auto), predict
    skips finished outputs and aggregate rewrites its report."""
    jobs = {doc["metadata"]["name"]: doc for _, doc in _kind("RayJob")}
    assert len(jobs) == 4
    for name, doc in jobs.items():
        limit = doc["spec"].get("backoffLimit")
        assert isinstance(limit, int) and limit > 0, f"{name}: backoffLimit {limit!r}"
        argv = shlex.split(doc["spec"]["entrypoint"])
        if argv[1].endswith(("jobs/train.py", "jobs/tune_hybrid.py")):
            assert argv[argv.index("--resume") + 1] == "auto" and argv[argv.index("--name") + 1], name


# ----------------------------------------------------------------------------- cluster launcher


def test_launcher_yaml_validates_against_rays_schema(monkeypatch):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    monkeypatch.chdir(ROOT)  # `ray up` resolves file_mounts from the directory it runs in
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu_types and all(t["resources"]["GPU"] >= 1 and t["min_workers"] == 0 for t in gpu_types)
    assert (ROOT / config["file_mounts"]["~/asaptrain"] / "pyproject.toml").is_file()
    assert any("pip install" in c and "-e ~/asaptrain" in c for c in config["setup_commands"])
    assert all("RAY_AUTH_MODE=token" in " ".join(config[k]) for k in ("head_start_ray_commands",
                                                                       "worker_start_ray_commands"))


def _check_boto_shape(value, shape, where: str, errors: list[str]) -> None:
    if shape.type_name == "structure":
        for key, item in value.items():
            if key not in shape.members:
                errors.append(f"{where}.{key}: not a RunInstances parameter")
            else:
                _check_boto_shape(item, shape.members[key], f"{where}.{key}", errors)
    elif shape.type_name == "list":
        for i, item in enumerate(value):
            _check_boto_shape(item, shape.member, f"{where}[{i}]", errors)


def test_launcher_node_configs_are_real_ec2_parameters():
    import botocore.session

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    errors: list[str] = []
    for name, node_type in yaml.safe_load(LAUNCHER.read_text())["available_node_types"].items():
        _check_boto_shape(node_type["node_config"], shape, name, errors)
    assert not errors, "\n".join(errors)
    _check_boto_shape({"InstanceTyp": "x"}, shape, "typo", errors)
    assert errors  # the check does catch a misspelt key


def test_local_cluster_script_parses_and_explains_itself():
    script = ROOT / "cluster" / "local-cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert out.returncode == 2 and "worker HEAD_IP" in out.stdout + out.stderr
    assert os.access(script, os.X_OK)
