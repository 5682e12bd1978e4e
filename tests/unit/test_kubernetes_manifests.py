"""`engineforge k8s`: manifests for a real published repository, validated against the Kubernetes schemas."""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from engineforge.errors import ConfigError, RepositoryError
from engineforge.serve import kubernetes as k8s
from engineforge.serve.kubernetes import KubernetesSettings
from engineforge.serve.repository import publish_engine
from tests.helpers.tiny_engine import make_tiny_bundle

# Newest Kubernetes release kubernetes-validate 1.37.0 ships schemas for; strict = unknown fields are errors.
K8S_VERSION = "1.37"
_SCHEMA_DIR = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("k8s")
    repo = root / "repo"
    publish_engine(make_tiny_bundle(root / "b"), repo, "clf")
    return repo


def validate_k8s(doc: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def container_of(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


# --- KServe: no PyPI package ships the InferenceService CRD's openAPI schema (the `kserve` SDK has generated
# model classes only, and the CRD YAML lives in KServe's git repository). So this is a structural schema written
# from KServe's types: ModelSpec = a core/v1 Container inline + modelFormat/runtime/storageUri/protocolVersion,
# PredictorSpec = a core/v1 PodSpec inline + min/maxReplicas... + model, ServingRuntimeSpec = formats + pod fields.
# The Container/PodSpec parts are the strict Kubernetes schemas themselves, so a typo there still fails.
def kserve_schema() -> dict[str, Any]:
    defs = json.loads((_SCHEMA_DIR / "_definitions.json").read_text())["$defs"]
    container, pod = defs["io.k8s.api.core.v1.Container"], defs["io.k8s.api.core.v1.PodSpec"]
    string, count = {"type": "string"}, {"type": "integer", "minimum": 0}

    def obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}

    def top(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        return obj({"apiVersion": {"const": api}, "kind": {"const": kind}, "spec": spec,
                    "metadata": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}},
                   ("apiVersion", "kind", "metadata", "spec"))

    protocols = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}
    model = obj(container["properties"] | {
        "modelFormat": obj({"name": string, "version": string}, ("name",)),
        "runtime": string, "runtimeVersion": string, "protocolVersion": protocols,
        "storageUri": {"type": "string", "pattern": r"^(s3|gs|pvc|https?|hf|oci)://"},
    }, ("modelFormat",))
    predictor = obj(pod["properties"] | {"minReplicas": count, "maxReplicas": count, "scaleTarget": count,
                                         "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                                         "model": model}, ("model",))
    runtime_pod = {key: pod["properties"][key] for key in
                   ("volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets", "containers")}
    formats = {"type": "array", "minItems": 1, "items": obj(
        {"name": string, "version": string, "autoSelect": {"type": "boolean"}, "priority": count}, ("name",))}
    runtime = obj(runtime_pod | {"supportedModelFormats": formats, "multiModel": {"type": "boolean"},
                                 "protocolVersions": {"type": "array", "items": protocols}},
                  ("containers", "supportedModelFormats"))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs, "oneOf": [
        top("serving.kserve.io/v1beta1", "InferenceService", obj({"predictor": predictor}, ("predictor",))),
        top("serving.kserve.io/v1alpha1", "ServingRuntime", runtime),
    ]}


@pytest.fixture(scope="module")
def kserve_validator() -> jsonschema.Draft202012Validator:
    schema = kserve_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


SOURCES = {"pvc": {"pvc": "model-repo"}, "s3": {"s3_uri": "s3://https://minio.storage:9000/models/clf-repo"}}


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_core_manifests_pass_strict_kubernetes_schema(repo, source, gpu):
    settings = k8s.settings_from_repo(repo, namespace="ml-serving", gpu=gpu, **SOURCES[source])
    docs = k8s.all_manifests(settings)
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "Service", "HorizontalPodAutoscaler"]
    for doc in docs:
        validate_k8s(doc)
        assert doc["metadata"]["namespace"] == "ml-serving"


def test_strict_validation_is_not_vacuous(repo):
    broken = k8s.deployment(k8s.settings_from_repo(repo, pvc="model-repo"))
    container_of(broken)["readinesProbe"] = container_of(broken).pop("readinessProbe")  # typo'd field
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(broken)


def test_probes_name_the_published_ensemble(repo):
    settings = k8s.settings_from_repo(repo, pvc="model-repo")
    assert settings.model == "clf"  # the only ensemble, not clf_engine / clf_tokenizer
    container = container_of(k8s.deployment(settings))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8001, "http": 8000, "metrics": 8002}
    ready, live, startup = (container[f"{kind}Probe"] for kind in ("readiness", "liveness", "startup"))
    assert ready["httpGet"] == {"path": "/v2/models/clf/ready", "port": "http"}
    assert live["httpGet"] == startup["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert ports[ready["httpGet"]["port"]] == 8000
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model load may take minutes
    assert container["command"] == ["engineforge", "serve", "--repo", "/models", "--bind", "0.0.0.0",
                                    "--grpc-port", "8001", "--http-port", "8000", "--metrics-port", "8002"]


def test_hpa_scales_the_deployment_on_queue_time(repo):
    settings = k8s.settings_from_repo(repo, pvc="model-repo", replicas=2, min_replicas=2, max_replicas=6,
                                      queue_time_target_us=25_000)
    deployment, hpa = k8s.deployment(settings), k8s.hpa(settings)
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"], deployment["spec"]["replicas"]) == (2, 6, 2)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"] == {"metric": {"name": "triton_queue_time_per_request_us"},
                              "target": {"type": "AverageValue", "averageValue": "25000"}}
    (rule,) = k8s.adapter_rules(settings)["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    query = rule["metricsQuery"]
    numerator, denominator = query.split(" / ")
    # any version's own models (clf.vN.tokenizer / clf.vN.engine), whichever version serves; PromQL escapes the dot
    assert "nv_inference_queue_duration_us" in numerator
    assert 'model=~"clf\\\\.v[0-9]+\\\\.(tokenizer|engine)"' in numerator
    assert "nv_inference_request_success" in denominator and 'model="clf"' in denominator
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8002",
                           "prometheus.io/path": "/metrics"}


def test_pvc_is_mounted_at_models(repo):
    pod = k8s.deployment(k8s.settings_from_repo(repo, pvc="model-repo"))["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "model-repository",
                               "persistentVolumeClaim": {"claimName": "model-repo", "readOnly": True}}]
    assert container_of({"spec": {"template": {"spec": pod}}})["volumeMounts"] == [
        {"name": "model-repository", "mountPath": "/models", "readOnly": True}]
    assert "initContainers" not in pod


def test_s3_is_synced_into_the_models_volume(repo):
    settings = k8s.settings_from_repo(repo, s3_uri=SOURCES["s3"]["s3_uri"], s3_secret="minio-creds")
    pod = k8s.deployment(settings)["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "model-repository", "emptyDir": {}}]
    (init,) = pod["initContainers"]
    assert init["volumeMounts"] == [{"name": "model-repository", "mountPath": "/models"}]
    assert init["command"][:5] == ["aws", "s3", "sync", "s3://models/clf-repo", "/models"]
    assert init["command"][-2:] == ["--endpoint-url", "https://minio.storage:9000"]
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in init["env"]}
    assert secrets == dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"), "minio-creds")
    plain = k8s.deployment(k8s.settings_from_repo(repo, s3_uri="s3://bucket/repo/"))
    assert plain["spec"]["template"]["spec"]["initContainers"][0]["command"][3:] == [
        "s3://bucket/repo", "/models", "--only-show-errors"]  # AWS itself: no endpoint flag


def test_gpu_adds_the_limit_and_gpu_scheduling(repo):
    gpu = k8s.deployment(k8s.settings_from_repo(repo, pvc="model-repo", gpu=True))
    assert container_of(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu = k8s.deployment(k8s.settings_from_repo(repo, pvc="model-repo"))
    assert "nvidia.com/gpu" not in container_of(cpu)["resources"]["limits"]
    assert not {"nodeSelector", "tolerations"} & set(cpu["spec"]["template"]["spec"])
    pinned = k8s.deployment(k8s.settings_from_repo(repo, pvc="model-repo", gpu=True,
                                                   node_selector=(("gpu-type", "h100"),)))
    assert pinned["spec"]["template"]["spec"]["nodeSelector"] == {"gpu-type": "h100"}


def test_services_select_the_pods(repo):
    settings = k8s.settings_from_repo(repo, pvc="model-repo")
    labels = k8s.deployment(settings)["spec"]["template"]["metadata"]["labels"]
    service, headless = k8s.service(settings), k8s.service(settings, headless=True)
    for svc in (service, headless):
        assert svc["spec"]["selector"] == labels
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 8001, "http": 8000, "metrics": 8002}
    assert "clusterIP" not in service["spec"] and headless["spec"]["clusterIP"] == "None"
    assert headless["metadata"]["name"] != service["metadata"]["name"]


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_kserve_variant_passes_structural_schema(repo, kserve_validator, source):
    settings = k8s.settings_from_repo(repo, kserve=True, gpu=True, **SOURCES[source])
    runtime, isvc = k8s.serving_runtime(settings), k8s.inference_service(settings)
    for doc in (runtime, isvc):
        kserve_validator.validate(doc)
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    expected = {"pvc": "pvc://model-repo/", "s3": "s3://models/clf-repo"}[source]
    assert model["storageUri"] == expected
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container" and container["command"][3] == "/mnt/models"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/clf/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [container]}})


def test_kserve_structural_schema_is_not_vacuous(repo, kserve_validator):
    isvc = k8s.inference_service(k8s.settings_from_repo(repo, pvc="model-repo"))
    for breakage in ("modelformat", "storage_uri", "replicas"):
        broken = copy.deepcopy(isvc)
        predictor = broken["spec"]["predictor"]
        if breakage == "modelformat":
            predictor["model"]["modelformat"] = predictor["model"].pop("modelFormat")
        elif breakage == "storage_uri":
            predictor["model"]["storageUri"] = "/local/path"
        else:
            predictor["minReplicas"] = "two"
        with pytest.raises(jsonschema.ValidationError):
            kserve_validator.validate(broken)


@pytest.mark.parametrize("options, fix", [
    ({"model": "bad name", "pvc": "r"}, "use letters, digits"),
    ({"pvc": "r", "replicas": 0}, "replicas must be an integer >= 1"),
    ({"pvc": "r", "min_replicas": 5, "max_replicas": 2}, "raise --max-replicas or lower --min-replicas"),
    ({"pvc": "r", "replicas": 9}, "change --replicas or the bounds"),
    ({}, "--pvc NAME"),
    ({"pvc": "r", "s3_uri": "s3://b/p"}, "exactly one model repository source"),
    ({"pvc": "Model_Repo"}, "PVC name"),
    ({"s3_uri": "https://bucket/path"}, "use s3://bucket/path"),
    ({"s3_uri": "s3://b/p", "s3_secret": "Bad Secret"}, "S3 secret name"),
    ({"pvc": "r", "name": "9-starts-with-digit"}, "starting with a letter"),
    ({"pvc": "r", "namespace": "ML"}, "namespace"),
    ({"pvc": "r", "memory": "lots"}, "Kubernetes quantity"),
    ({"pvc": "r", "image": "has space:1"}, "give a reference"),
])  # fmt: skip
def test_invalid_settings_say_how_to_fix(options, fix):
    with pytest.raises(ConfigError, match=re.escape(fix)):
        KubernetesSettings(**({"model": "clf"} | options))


def test_derived_name_is_a_valid_kubernetes_name():
    settings = KubernetesSettings(model="Intent_v2.1", pvc="r")
    assert settings.name == "triton-intent-v2-1"
    validate_k8s(k8s.service(settings))


def test_repository_must_hold_the_ensemble(repo, tmp_path):
    with pytest.raises(ConfigError, match=r"no ensemble 'clf_engine'.*\['clf'\]"):
        k8s.settings_from_repo(repo, "clf_engine", pvc="r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryError, match=r"holds no ensemble.*publish"):
        k8s.settings_from_repo(tmp_path / "empty", pvc="r")
    with pytest.raises(RepositoryError, match="does not exist"):
        k8s.settings_from_repo(tmp_path / "missing", pvc="r")
    two = tmp_path / "two"
    shutil.copytree(repo, two)
    shutil.copytree(two / "clf", two / "other")  # a second ensemble without its composing models
    with pytest.raises(ConfigError, match=r"several ensembles \['clf', 'other'\]: choose one with --model"):
        k8s.settings_from_repo(two, pvc="r")
    with pytest.raises(RepositoryError, match="lacks"):
        k8s.settings_from_repo(two, "other", pvc="r")
    assert k8s.settings_from_repo(two, "clf", pvc="r").model == "clf"


def test_write_manifests_round_trips(repo, tmp_path):
    settings = k8s.settings_from_repo(repo, pvc="model-repo", kserve=True)
    out = tmp_path / "deploy"
    paths = k8s.write_manifests(settings, out)
    assert all(p.is_file() and p.is_relative_to(out) for p in paths)
    manifests = sorted((out / "manifests").glob("*.yaml"))
    assert [yaml.safe_load(p.read_text()) for p in manifests] == k8s.all_manifests(settings)
    kserve_docs = list(yaml.safe_load_all((out / "kserve" / "inference-service.yaml").read_text()))
    assert [d["kind"] for d in kserve_docs] == ["ServingRuntime", "InferenceService"]
    assert yaml.safe_load((out / "prometheus-adapter-values.yaml").read_text()) == k8s.adapter_rules(settings)
    dockerfile = (out / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["engineforge", "serve"]' in dockerfile and '"--grpc-port", "8001"' in dockerfile
    assert "/v2/models/clf/ready" in (out / "README.md").read_text()


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="engineforge")
    k8s.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["k8s", *argv])
    return args.func(args)


def test_cli_writes_manifests(repo, tmp_path, capsys):
    out = tmp_path / "k8s"
    assert cli(["--repo", str(repo), "--out", str(out), "--s3", "s3://bucket/repo", "--gpu", "--kserve",
                "--image", "registry.example/engineforge:0.1"]) == 0
    printed = capsys.readouterr().out.split()
    assert str(out / "manifests" / "1-triton-clf-deployment.yaml") in printed and str(out / "Dockerfile") in printed
    assert all(Path(p).is_file() for p in printed)
    deployment = yaml.safe_load((out / "manifests" / "1-triton-clf-deployment.yaml").read_text())
    validate_k8s(deployment)
    assert container_of(deployment)["image"] == "registry.example/engineforge:0.1"


@pytest.mark.parametrize("argv, message", [
    (["--pvc", "r", "--min-replicas", "5", "--max-replicas", "2"], "raise --max-replicas"),
    ([], "--pvc NAME"),
    (["--pvc", "r", "--model", "nope"], "no ensemble 'nope'"),
])  # fmt: skip
def test_cli_usage_errors_exit_2(repo, tmp_path, capsys, argv, message):
    assert cli(["--repo", str(repo), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("engineforge k8s: error:") and message in err
    assert not (tmp_path / "o").exists()


def test_cli_failures(repo, tmp_path, capsys):
    assert cli(["--repo", str(tmp_path / "missing"), "--pvc", "r", "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: the two sources exclude each other
        cli(["--repo", str(repo), "--pvc", "r", "--s3", "s3://b/p"])
    assert exc.value.code == 2
