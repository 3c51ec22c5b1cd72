"""Extract the field paths of KubeRay's CRDs into k8s/schema/crd-fields.json (what tests/test_manifests.py checks).

The CRDs are about 2 MB of YAML; the extract keeps only each field's path and type, with the
pod template, container and RayCluster spec schemas written once and referred to as
``@PodTemplateSpec``, ``@Container`` and ``@RayClusterSpec``. Regenerate it when moving to a new
KubeRay release:

    git clone --depth 1 --branch v1.7.0 https://github.com/ray-project/kuberay
    python k8s/schema/extract_crd_fields.py kuberay/ray-operator/config/crd/bases --ref v1.7.0 > k8s/schema/crd-fields.json

Path syntax: ``a.b`` a field, ``a[]`` the items of a list, ``a.*`` any key of a map. Types:
object, array, string, integer, number, boolean, int-or-string, any (unchecked below),
``enum:x|y`` (a string from the list), ``@Name`` (the named schema).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
# Values the operator accepts that the CRD schema types only as string (JobSubmissionMode).
GO_ENUMS = {"RayJobSpec": {"submissionMode": "enum:K8sJobMode|HTTPMode|InteractiveMode|SidecarMode"}}
# (name, CRD kind, path in that kind's v1 schema) of the subtrees written once.
SHARED = [("RayClusterSpec", "RayCluster", "spec"),
          ("PodTemplateSpec", "RayCluster", "spec.headGroupSpec.template"),
          ("Container", "RayCluster", "spec.headGroupSpec.template.spec.containers[]")]


def _type(node: dict) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
        return "any"
    if "enum" in node and node.get("type") == "string":
        return "enum:" + "|".join(map(str, node["enum"]))
    return node.get("type", "any")


def flatten(node: dict, prefix: str = "") -> dict[str, str]:
    """Every path below ``node`` (relative, prefix ``prefix``) with its type."""
    out = {prefix: _type(node)}
    join = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)
    for key, child in (node.get("properties") or {}).items():
        out.update(flatten(child, join(key)))
    if isinstance(node.get("items"), dict):
        out.update(flatten(node["items"], prefix + "[]"))
    if isinstance(node.get("additionalProperties"), dict):
        out.update(flatten(node["additionalProperties"], join("*")))
    return out


def required(node: dict, shapes: dict[str, str], prefix: str = "", top: str | None = None) -> dict[str, list]:
    """Path -> the fields an object there must have; shared subtrees are listed under their name."""
    name = shapes.get(_shape(node))
    if name and name != top:
        return {}
    out = {prefix: sorted(node["required"])} if node.get("required") else {}
    join = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)
    for key, child in (node.get("properties") or {}).items():
        out.update(required(child, shapes, join(key)))
    if isinstance(node.get("items"), dict):
        out.update(required(node["items"], shapes, prefix + "[]"))
    if isinstance(node.get("additionalProperties"), dict):
        out.update(required(node["additionalProperties"], shapes, join("*")))
    return out


def _subtree(node: dict, path: str) -> dict:
    for part in path.split("."):
        items = part.endswith("[]")
        node = node["properties"][part.removesuffix("[]")]
        if items:
            node = node["items"]
    return node


def _shape(node: dict) -> str:
    """Hash of a subtree's paths and types (descriptions ignored)."""
    return hashlib.sha1(json.dumps(sorted(flatten(node).items())).encode()).hexdigest()


def factor(node: dict, shapes: dict[str, str], prefix: str = "", top: str | None = None) -> dict[str, str]:
    """Like flatten, but a subtree shaped like a shared schema becomes ``@Name``."""
    name = shapes.get(_shape(node))
    if name and name != top:
        return {prefix: "@" + name}
    out = {prefix: _type(node)}
    join = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)
    for key, child in (node.get("properties") or {}).items():
        out.update(factor(child, shapes, join(key)))
    if isinstance(node.get("items"), dict):
        out.update(factor(node["items"], shapes, prefix + "[]"))
    if isinstance(node.get("additionalProperties"), dict):
        out.update(factor(node["additionalProperties"], shapes, join("*")))
    return out


def extract(bases: Path, ref: str) -> dict:
    schemas = {}
    for kind, file in CRD_FILES.items():
        crd = yaml.safe_load((bases / file).read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schemas[kind] = version["schema"]["openAPIV3Schema"]
    shared = {name: _subtree(schemas[kind], path) for name, kind, path in SHARED}
    shapes = {_shape(node): name for name, node in shared.items()}
    types = {name: factor(node, shapes, top=name) for name, node in shared.items()}
    musts = {name: required(node, shapes, top=name) for name, node in shared.items()}
    job_spec = _subtree(schemas["RayJob"], "spec")
    types["RayJobSpec"] = factor(job_spec, shapes)
    musts["RayJobSpec"] = required(job_spec, shapes)
    for name, overrides in GO_ENUMS.items():
        types[name].update(overrides)
    commit = ""
    try:
        commit = subprocess.run(["git", "-C", str(bases), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "source": "https://github.com/ray-project/kuberay ray-operator/config/crd/bases/ "
                  + ", ".join(CRD_FILES.values()) + " (the v1 version's openAPIV3Schema)",
        "version": ref + (f" (commit {commit})" if commit else ""),
        "apiVersion": "ray.io/v1",
        "syntax": "a.b field, a[] list items, a.* any map key; @Name = the named schema; "
                  "types object/array/string/integer/number/boolean/int-or-string/any/enum:x|y",
        "kinds": {"RayCluster": "RayClusterSpec", "RayJob": "RayJobSpec"},
        "enums_from_go": "submissionMode: ray-operator/apis/ray/v1/rayjob_types.go (a Go enum the CRD leaves a string)",
        "types": {name: dict(sorted(paths.items())) for name, paths in sorted(types.items())},
        "required": {name: dict(sorted(paths.items())) for name, paths in sorted(musts.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bases", type=Path, help="kuberay's ray-operator/config/crd/bases directory")
    parser.add_argument("--ref", required=True, help="the KubeRay release the CRDs come from, e.g. v1.7.0")
    args = parser.parse_args()
    json.dump(extract(args.bases, args.ref), sys.stdout, indent=0, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
