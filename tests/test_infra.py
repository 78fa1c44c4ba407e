"""infra/ cannot be deployed from here, so check what can be checked: every YAML parses and names real fields
of its tool, the pieces fit together (the ConfigMap the RayJob mounts exists and is a valid run config, the
model cache is node-local, GPU workers start at zero), and the Dockerfile installs from the same pinned
file as the Makefile, non-editable, and runs as a non-root user."""

import re
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parent.parent / "infra"
IMAGE_UID = int(re.search(r"^ARG UID=(\d+)$", (INFRA / "Dockerfile").read_text(), re.M).group(1))

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
POD_SPEC = {
    "containers",
    "initContainers",
    "volumes",
    "tolerations",
    "serviceAccountName",
    "nodeSelector",
    "affinity",
    "terminationGracePeriodSeconds",
    "securityContext",
}
CONTAINER = {
    "name",
    "image",
    "command",
    "args",
    "resources",
    "env",
    "envFrom",
    "volumeMounts",
    "ports",
    "securityContext",
}
VOLUME = {"name", "configMap", "emptyDir", "secret", "persistentVolumeClaim", "hostPath"}


def _assert_fields(obj: dict, allowed: set, where: str):
    unknown = set(obj) - allowed
    assert not unknown, f"{where}: unknown fields {sorted(unknown)}"


def _check_pod_template(template: dict, where: str):
    _assert_fields(template, {"metadata", "spec"}, where)
    spec = template["spec"]
    _assert_fields(spec, POD_SPEC, f"{where}.spec")
    for c in spec["containers"] + spec.get("initContainers", []):
        _assert_fields(c, CONTAINER, f"{where}.containers[{c['name']}]")
        assert c["image"].endswith("stylegen:latest")
    for v in spec.get("volumes", []):
        _assert_fields(v, VOLUME, f"{where}.volumes[{v['name']}]")


def rayjob_documents() -> dict[str, dict]:
    """kind -> document of infra/kuberay-rayjob.yaml (one `kubectl apply -f` for all of them)."""
    documents = list(yaml.safe_load_all((INFRA / "kuberay-rayjob.yaml").read_text()))
    kinds = [document["kind"] for document in documents]
    assert sorted(kinds) == ["ConfigMap", "RayJob"], kinds
    return {document["kind"]: document for document in documents}


def test_rayjob_names_only_real_fields():
    job = rayjob_documents()["RayJob"]
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
            assert not {n for n in literal if "SECRET" in n or "KEY" in n or "TOKEN" in n}, c["name"]
            assert [e["secretRef"]["name"] for e in c["envFrom"]] == ["stylegen-s3"]


def test_rayjob_mounts_a_defined_run_config_and_scales_gpu_workers_from_zero():
    from pipeline.run.preflight import check_config
    from pipeline.run_config import RunConfig

    documents = rayjob_documents()
    config_map, cluster = documents["ConfigMap"], documents["RayJob"]["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    # the ConfigMap the head mounts is defined here, and it is infra/run-config.yaml, a valid run config
    mounted = {v["name"]: v["configMap"]["name"] for v in head["volumes"] if "configMap" in v}
    assert mounted == {"run-config": config_map["metadata"]["name"]} == {"run-config": "stylegen-run-config"}
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == "run-config")
    entrypoint = documents["RayJob"]["spec"]["entrypoint"]
    assert f"--config {mount['mountPath']}/run.yaml" in entrypoint
    text = config_map["data"]["run.yaml"]
    assert text == (INFRA / "run-config.yaml").read_text(), (
        "the ConfigMap in kuberay-rayjob.yaml holds infra/run-config.yaml verbatim: paste the file under "
        "data.run.yaml again (indented by 4 spaces)"
    )
    run_config = RunConfig.model_validate(yaml.safe_load(text))
    check_config(run_config)

    # GPU workers start at zero; the pool's target (--actors) is what the group can scale to
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] == gpu["replicas"] == 0 and cluster["enableInTreeAutoscaling"] is True
    actors = int(re.search(r"--actors (\d+)", entrypoint).group(1))
    assert (
        actors
        == gpu["maxReplicas"]
        * gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    )

    # the model cache is node-local (hostPath or a claim), never an emptyDir, and the config points into it
    pod = gpu["template"]["spec"]
    worker = pod["containers"][0]
    cache_mount = next(
        m for m in worker["volumeMounts"] if run_config.model_cache_dir.startswith(m["mountPath"])
    )
    cache_volume = next(v for v in pod["volumes"] if v["name"] == cache_mount["name"])
    assert "emptyDir" not in cache_volume and {"hostPath", "persistentVolumeClaim"} & set(cache_volume)
    assert cache_mount["mountPath"] == "/cache"  # infra/Dockerfile's STYLEGEN_CACHE and HF_HOME live there

    # staged weights: every model source is an s3:// folder (no hub call); HF_TOKEN only from a Secret
    assert all(v.startswith("s3://") for v in run_config.model_paths.values())
    assert all(run_config.scoring.options[k].startswith("s3://") for k in ("clip_model", "dino_model"))
    (token,) = [e for e in worker["env"] if e["name"] == "HF_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "stylegen-hf", "key": "HF_TOKEN", "optional": True}

    # the containers run as the image's non-root user; only the init container that hands the hostPath
    # folder to that user runs as root, and it only runs chown
    for spec in (head, pod):
        for container in spec["containers"]:
            assert container["securityContext"]["runAsNonRoot"] is True, container["name"]
    (init,) = pod["initContainers"]
    assert init["command"][0] == "chown" and init["command"][1].startswith(f"{IMAGE_UID}:")


def test_ray_cluster_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray-cluster-aws.yaml").read_text())
    validate_config(config)  # raw file against ray-schema.json
    prepared = prepare_config(config)  # with Ray's defaults merged in, as `ray up` does
    validate_config(prepared)
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs the driver only"
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0, "GPU workers autoscale from zero"
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert config["provider"]["cache_stopped_nodes"] is False  # a reclaimed spot node is not restarted
    # a node-local model cache on the host, handed to the image's user before the container starts
    (mount,) = [o for o in config["docker"]["run_options"] if o.startswith("-v ")]
    host, container = mount.removeprefix("-v ").split(":")
    assert container == "/cache"
    assert f"sudo chown {IMAGE_UID}:{IMAGE_UID} {host}" in " ".join(config["initialization_commands"])


def test_dockerfile_installs_from_the_pinned_lock_like_the_makefile():
    dockerfile = (INFRA / "Dockerfile").read_text()
    makefile = (INFRA.parent / "Makefile").read_text()
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", dockerfile, re.M)
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\w.\-]+-runtime-", dockerfile)
    assert "COPY pyproject.toml requirements.lock" in dockerfile
    assert "--constraint requirements.lock" in dockerfile and "--constraint requirements.lock" in makefile
    install = next(line for line in dockerfile.splitlines() if "pip install" in line)
    assert not re.search(r"(^|\s)(-e|--editable)(\s|=|$)", install), "a regular install, not editable"
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    assert re.search(rf"useradd .*--uid \$\{{UID\}} .*{users[-1]}", dockerfile)
    assert re.search(rf"chown {users[-1]}:{users[-1]} /cache", dockerfile), "the cache belongs to that user"
    lock = (INFRA.parent / "requirements.lock").read_text().splitlines()
    assert "torch==2.13.0" in lock, "the one source of truth pins torch"
    assert not any(line.startswith("torchvision") for line in lock)


def test_production_run_config_loads_and_passes_the_drivers_checks():
    from pipeline.run.preflight import check_config
    from pipeline.run_config import RunConfig

    config = RunConfig.load(INFRA / "run-config.yaml")
    check_config(config)  # filter rules parse against the score names, sampler settings validate
    assert config.preset == "stable-cascade" and config.scoring.preset == "real"
    assert "/config/run.yaml" in (INFRA / "kuberay-rayjob.yaml").read_text()
