"""`engineforge k8s`: Kubernetes manifests (Deployment, Services, HPA, optional KServe) for a published repository.

Manifests are built as plain dicts by pure functions and written with `yaml.safe_dump`, so tests can validate
each document against the Kubernetes schemas. Exit codes as for every engineforge command: 0, 1, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from engineforge.cli_support import arguments_checked, run_command
from engineforge.defaults import DEFAULT_REPO

from .kubernetes_settings import (
    DEFAULT_IMAGE,
    DEFAULT_OUT,
    GRPC_PORT,
    HTTP_PORT,
    KSERVE_MODELS_DIR,
    METRICS_PORT,
    MODELS_DIR,
    QUEUE_METRIC,
    KubernetesSettings,
    settings_from_repo,
    split_s3_uri,
)

__all__ = ["KubernetesSettings", "all_manifests", "settings_from_repo", "write_manifests"]


def _metadata(s: KubernetesSettings, name: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or s.name, "labels": _labels(s)}
    if s.namespace:
        meta["namespace"] = s.namespace
    return meta


def _labels(s: KubernetesSettings) -> dict[str, str]:
    return {"app.kubernetes.io/name": "engineforge-triton", "app.kubernetes.io/instance": s.name}


def _probes(s: KubernetesSettings) -> dict[str, Any]:
    """Liveness: the process answers. Readiness: the ensemble itself is READY, which turns false when a stub dies."""
    def get(path: str) -> dict[str, Any]:
        return {"path": path, "port": "http"}

    return {
        # model loading can take a minute or more; liveness only starts counting after this succeeds (10 min)
        "startupProbe": {"httpGet": get("/v2/health/live"), "periodSeconds": 10, "failureThreshold": 60},
        "livenessProbe": {"httpGet": get("/v2/health/live"), "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": get(f"/v2/models/{s.model}/ready"), "periodSeconds": 5, "failureThreshold": 2},
    }


def _resources(s: KubernetesSettings) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": s.cpu, "memory": s.memory}, "limits": {"memory": s.memory}}
    if s.gpu:
        resources["limits"]["nvidia.com/gpu"] = 1
    return resources


def _scheduling(s: KubernetesSettings) -> dict[str, Any]:
    default = (("nvidia.com/gpu.present", "true"),) if s.gpu else ()
    spec: dict[str, Any] = {}
    if selector := dict(default if s.node_selector is None else s.node_selector):
        spec["nodeSelector"] = selector
    if s.gpu:  # GPU nodes are commonly tainted so only pods that ask for a GPU land there
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def _server_container(s: KubernetesSettings, repo_dir: str, grpc_name: str = "grpc") -> dict[str, Any]:
    return {
        "name": "triton",
        "image": s.image,
        "command": ["engineforge", "serve", "--repo", repo_dir, "--bind", "0.0.0.0", "--grpc-port", str(GRPC_PORT),
                    "--http-port", str(HTTP_PORT), "--metrics-port", str(METRICS_PORT)],
        "ports": [{"name": grpc_name, "containerPort": GRPC_PORT, "protocol": "TCP"},
                  {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        **_probes(s),
        "resources": _resources(s),
    }


def deployment(s: KubernetesSettings) -> dict[str, Any]:
    container = _server_container(s, MODELS_DIR) | {
        "volumeMounts": [{"name": "model-repository", "mountPath": MODELS_DIR, "readOnly": True}]}
    pod: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 60, **_scheduling(s)}
    if s.pvc is not None:
        pod["volumes"] = [{"name": "model-repository", "persistentVolumeClaim": {"claimName": s.pvc, "readOnly": True}}]
    else:  # engineforge serve needs a local directory: sync the bucket into an emptyDir before the server starts
        endpoint, bucket_uri = split_s3_uri(s.s3_uri or "")
        env = [{"name": key, "valueFrom": {"secretKeyRef": {"name": s.s3_secret, "key": key,
                                                            **({"optional": True} if "REGION" in key else {})}}}
               for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")]
        sync = ["aws", "s3", "sync", bucket_uri, MODELS_DIR, "--only-show-errors"]
        pod["initContainers"] = [{"name": "sync-model-repository", "image": s.s3_sync_image,
                                  "command": sync + (["--endpoint-url", endpoint] if endpoint else []), "env": env,
                                  "volumeMounts": [{"name": "model-repository", "mountPath": MODELS_DIR}]}]
        pod["volumes"] = [{"name": "model-repository", "emptyDir": {}}]
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                   "prometheus.io/path": "/metrics"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(s), "spec": {
        "replicas": s.replicas,
        "selector": {"matchLabels": _labels(s)},
        "template": {"metadata": {"labels": _labels(s), "annotations": annotations}, "spec": pod},
    }}


def service(s: KubernetesSettings, headless: bool = False) -> dict[str, Any]:
    """ClusterIP Service; headless=True gives one DNS record per ready pod, to load-test each endpoint."""
    ports = [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"}
             for n, p in (("grpc", GRPC_PORT), ("http", HTTP_PORT), ("metrics", METRICS_PORT))]
    spec: dict[str, Any] = {"selector": _labels(s), "ports": ports}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(s, s.name + "-pods" if headless else None),
            "spec": spec}


def hpa(s: KubernetesSettings) -> dict[str, Any]:
    """Scale on average queue time per request (a Pods metric the Prometheus Adapter serves, see adapter_rules)."""
    target = {"type": "AverageValue", "averageValue": str(s.queue_time_target_us)}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _metadata(s), "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": s.name},
        "minReplicas": s.min_replicas, "maxReplicas": s.max_replicas,
        "metrics": [{"type": "Pods", "pods": {"metric": {"name": QUEUE_METRIC}, "target": target}}],
        # a new pod needs its load time before it helps: do not flap down while it warms up
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
    }}


def adapter_rules(s: KubernetesSettings) -> dict[str, Any]:
    """Prometheus Adapter Helm values: queue time of the composing models per ensemble request, per pod."""
    steps = s.version_models_regex
    queue = f'sum(rate(nv_inference_queue_duration_us{{<<.LabelMatchers>>,model=~"{steps}"}}[1m])) by (<<.GroupBy>>)'
    done = f'sum(rate(nv_inference_request_success{{<<.LabelMatchers>>,model="{s.model}"}}[1m])) by (<<.GroupBy>>)'
    return {"rules": {"custom": [{
        "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_queue_duration_us$", "as": QUEUE_METRIC},
        "metricsQuery": f"{queue} / clamp_min({done}, 1e-9)",  # an idle pod reads 0, not NaN
    }]}}


def serving_runtime(s: KubernetesSettings) -> dict[str, Any]:
    """The stock KServe Triton image lacks engineforge (the python backend imports it): ship our own runtime."""
    container = _server_container(s, KSERVE_MODELS_DIR, grpc_name="h2c")  # KServe routes gRPC on a port named h2c
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
            "metadata": _metadata(s, s.name + "-runtime"), "spec": {
                "supportedModelFormats": [{"name": "triton", "version": "2", "autoSelect": False}],
                "protocolVersions": ["v2", "grpc-v2"], "containers": [container | {"name": "kserve-container"}],
                **_scheduling(s)}}


def inference_service(s: KubernetesSettings) -> dict[str, Any]:
    if s.pvc is not None:
        storage_uri = f"pvc://{s.pvc}/"
    else:  # KServe takes the endpoint from the S3 secret's serving.kserve.io/s3-endpoint annotation instead
        storage_uri = split_s3_uri(s.s3_uri or "")[1]
    meta = _metadata(s)
    # RawDeployment: a plain Deployment, so probes on the HTTP port and several ports work (Knative allows one)
    meta["annotations"] = {"serving.kserve.io/deploymentMode": "RawDeployment"}
    model = {"modelFormat": {"name": "triton"}, "runtime": s.name + "-runtime", "storageUri": storage_uri,
             "protocolVersion": "grpc-v2"}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": meta, "spec": {
        "predictor": {"minReplicas": s.min_replicas, "maxReplicas": s.max_replicas, "model": model}}}


def all_manifests(s: KubernetesSettings) -> list[dict[str, Any]]:
    """The core documents, in apply order (the KServe variant is separate: applying both would serve twice)."""
    return [deployment(s), service(s), service(s, headless=True), hpa(s)]


DOCKERFILE = """\
# The python backend's model.py imports engineforge, so the server image carries the project wheel.
# Build the wheel first:  python -m pip wheel --no-deps -w {out}/dist .
FROM python:3.11-slim
COPY dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/engineforge-*.whl && rm -rf /tmp/dist
EXPOSE {http} {grpc} {metrics}
ENTRYPOINT ["engineforge", "serve"]
CMD ["--repo", "/models", "--bind", "0.0.0.0", "--grpc-port", "{grpc}", "--http-port", "{http}", \
"--metrics-port", "{metrics}"]
"""

README = """\
# Kubernetes manifests for `{model}`

Generated by `engineforge k8s`. Build the image (`Dockerfile` here, after
`python -m pip wheel --no-deps -w {out}/dist .`), push it as `{image}`, then:

    kubectl apply -f {out}/manifests/

The HPA scales on `{metric}`: merge `prometheus-adapter-values.yaml` (the Prometheus Adapter rule that
computes it from Triton's metrics) into your prometheus-adapter Helm values under `rules.custom`.
{kserve}Readiness asks `/v2/models/{model}/ready`, so a pod whose model died stops getting traffic.
"""


def _dump(path: Path, documents: list[dict[str, Any]]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def write_manifests(s: KubernetesSettings, out_dir: str | os.PathLike[str] = DEFAULT_OUT) -> list[Path]:
    """Write manifests/*.yaml (apply the folder), kserve/, the adapter values, a Dockerfile and a README."""
    out = Path(out_dir)
    written = [_dump(out / "manifests" / f"{i}-{doc['metadata']['name']}-{doc['kind'].lower()}.yaml", [doc])
               for i, doc in enumerate(all_manifests(s), start=1)]
    if s.kserve:
        written.append(_dump(out / "kserve" / "inference-service.yaml", [serving_runtime(s), inference_service(s)]))
    written.append(_dump(out / "prometheus-adapter-values.yaml", [adapter_rules(s)]))
    (out / "Dockerfile").write_text(DOCKERFILE.format(out=out, http=HTTP_PORT, grpc=GRPC_PORT, metrics=METRICS_PORT))
    kserve = f"KServe variant: `kubectl apply -f {out}/kserve/` instead of manifests/.\n" if s.kserve else ""
    (out / "README.md").write_text(README.format(model=s.model, out=out, image=s.image, metric=QUEUE_METRIC,
                                                 kserve=kserve))
    return [*written, out / "Dockerfile", out / "README.md"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `k8s`; the parser's `func` is `run`."""
    p = subparsers.add_parser("k8s", help="write Kubernetes manifests for a model repository",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=DEFAULT_REPO, help="published repository to read (default: %(default)s)")
    p.add_argument("--model", default=None, help="ensemble to serve (default: the only one in the repository)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="server image (default: %(default)s)")
    p.add_argument("--name", default="", help="Kubernetes object name (default: triton-<model>)")
    p.add_argument("--namespace", default=None, help="namespace (default: the one kubectl uses)")
    p.add_argument("--replicas", type=int, default=1, help="initial replicas (default: %(default)s)")
    p.add_argument("--min-replicas", type=int, default=1, help="HPA lower bound (default: %(default)s)")
    p.add_argument("--max-replicas", type=int, default=4, help="HPA upper bound (default: %(default)s)")
    p.add_argument("--queue-time-target-us", type=int, default=10_000,
                   help="HPA target: average queue time per request in microseconds (default: %(default)s)")
    p.add_argument("--gpu", action="store_true", help="request one nvidia.com/gpu per pod, on GPU nodes")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pvc", default=None, metavar="NAME", help="PersistentVolumeClaim holding the repository")
    source.add_argument("--s3", default=None, metavar="URI", help="s3://bucket/path or s3://https://host:port/b/p")
    p.add_argument("--s3-secret", default="engineforge-s3", help="Secret with the AWS_* keys (default: %(default)s)")
    p.add_argument("--kserve", action="store_true", help="also write a KServe ServingRuntime + InferenceService")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    return run_command("engineforge k8s", lambda: _k8s(args))


def _k8s(args: argparse.Namespace) -> int:
    with arguments_checked():  # a bad flag value is a usage error (exit 2)
        settings = settings_from_repo(
            args.repo, args.model, pvc=args.pvc, s3_uri=args.s3, s3_secret=args.s3_secret, image=args.image,
            name=args.name, namespace=args.namespace, replicas=args.replicas, min_replicas=args.min_replicas,
            max_replicas=args.max_replicas, queue_time_target_us=args.queue_time_target_us, gpu=args.gpu,
            kserve=args.kserve,
        )
    for path in write_manifests(settings, args.out):
        print(path)
    return 0
