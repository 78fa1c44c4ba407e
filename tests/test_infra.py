"""infra/ cannot be deployed from here, so check what can be checked: every YAML parses and names real fields
of its tool, and the Dockerfile installs from the same pinned file as the Makefile."""

import re
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parent.parent / "infra"

# Field names of KubeRay's RayJob CRD (ray.io/v1), taken from the CRD's openAPIV3Schema.
RAYJOB_SPEC = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "clusterSelector",
    "deletionStrategy",
    "entrypoint",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "entrypointResources",
    "jobId",
    "managedBy",
    "metadata",
    "preRunningDeadlineSeconds",
    "rayClusterSpec",
    "runtimeEnvYAML",
    "shutdownAfterJobFinishes",
    "submissionMode",
    "submitterConfig",
    "submitterPodTemplate",
    "suspend",
    "ttlSecondsAfterFinished",
}
RAY_CLUSTER_SPEC = {
    "authOptions",
    "autoscalerOptions",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "headGroupSpec",
    "headServiceAnnotations",
    "managedBy",
    "networkPolicy",
    "rayVersion",
    "suspend",
    "tlsOptions",
    "upgradeStrategy",
    "workerGroupSpecs",
}
HEAD_GROUP = {
    "enableIngress",
    "headService",
    "labels",
    "rayStartParams",
    "resources",
    "serviceType",
    "template",
}
WORKER_GROUP = {
    "groupName",
    "idleTimeoutSeconds",
    "labels",
    "maxReplicas",
    "minReplicas",
    "numOfHosts",
    "priority",
    "rayStartParams",
    "replicas",
    "resources",
    "scaleStrategy",
    "suspend",
    "template",
}
# The subset of Kubernetes PodSpec / Container / Volume fields these manifests may use.
POD_SPEC = {"containers", "volumes", "tolerations", "serviceAccountName", "nodeSelector", "affinity"}
CONTAINER = {"name", "image", "command", "args", "resources", "env", "envFrom", "volumeMounts", "ports"}
VOLUME = {"name", "configMap", "emptyDir", "secret", "persistentVolumeClaim"}


def _assert_fields(obj: dict, allowed: set, where: str):
    unknown = set(obj) - allowed
    assert not unknown, f"{where}: unknown fields {sorted(unknown)}"


def _check_pod_template(template: dict, where: str):
    _assert_fields(template, {"metadata", "spec"}, where)
    spec = template["spec"]
    _assert_fields(spec, POD_SPEC, f"{where}.spec")
    for c in spec["containers"]:
        _assert_fields(c, CONTAINER, f"{where}.containers[{c['name']}]")
        assert c["image"].endswith("stylegen:latest")
    for v in spec.get("volumes", []):
        _assert_fields(v, VOLUME, f"{where}.volumes[{v['name']}]")


def test_rayjob_names_only_real_fields():
    job = yaml.safe_load((INFRA / "kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    _assert_fields(job["spec"], RAYJOB_SPEC, "spec")
    assert job["spec"]["entrypoint"].startswith("stylegen run s3://")
    cluster = job["spec"]["rayClusterSpec"]
    _assert_fields(cluster, RAY_CLUSTER_SPEC, "rayClusterSpec")
    _assert_fields(cluster["headGroupSpec"], HEAD_GROUP, "headGroupSpec")
    _check_pod_template(cluster["headGroupSpec"]["template"], "headGroupSpec.template")
    for group in cluster["workerGroupSpecs"]:
        _assert_fields(group, WORKER_GROUP, f"workerGroupSpecs[{group['groupName']}]")
        _check_pod_template(group["template"], f"workerGroupSpecs[{group['groupName']}].template")
        gpus = [c["resources"]["limits"]["nvidia.com/gpu"] for c in group["template"]["spec"]["containers"]]
        assert gpus == [1], "one GPU per worker pod: one stylegen actor per GPU"
    # no credential may live in the manifest itself: secrets come from a Secret (envFrom) or IRSA
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        for c in pod["spec"]["containers"]:
            literal = {e["name"] for e in c.get("env", []) if "value" in e}
            assert not {n for n in literal if "SECRET" in n or "KEY" in n}, c["name"]
            assert {"secretRef": {"name": "stylegen-s3"}} in c["envFrom"]


def test_ray_cluster_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray-cluster-aws.yaml").read_text())
    validate_config(config)  # raw file against ray-schema.json
    prepared = prepare_config(config)  # with Ray's defaults merged in, as `ray up` does
    validate_config(prepared)
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs the driver only"
    assert config["available_node_types"]["gpu_worker"]["min_workers"] == 0, "GPU workers autoscale from zero"


def test_dockerfile_installs_from_the_pinned_lock_like_the_makefile():
    dockerfile = (INFRA / "Dockerfile").read_text()
    makefile = (INFRA.parent / "Makefile").read_text()
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", dockerfile, re.M)
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\w.\-]+-runtime-", dockerfile)
    assert "COPY pyproject.toml requirements.lock" in dockerfile
    assert "--constraint requirements.lock" in dockerfile and "--constraint requirements.lock" in makefile
    lock = (INFRA.parent / "requirements.lock").read_text().splitlines()
    assert "torch==2.13.0" in lock, "the one source of truth pins torch"
    assert not any(line.startswith("torchvision") for line in lock)


def test_production_run_config_loads_and_passes_the_drivers_checks():
    from pipeline.driver import check_config
    from pipeline.run_config import RunConfig

    config = RunConfig.load(INFRA / "run-config.yaml")
    check_config(config)  # filter rules parse against the score names, sampler settings validate
    assert config.preset == "stable-cascade" and config.scoring.preset == "real"
    assert "/config/run.yaml" in (INFRA / "kuberay-rayjob.yaml").read_text()
