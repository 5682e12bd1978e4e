"""Settings for `engineforge k8s`, validated on creation (names, quantities, storage) with the fix in the message."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from engineforge.defaults import check_model_name
from engineforge.errors import ConfigError, RepositoryError

GRPC_PORT, HTTP_PORT, METRICS_PORT = 8001, 8000, 8002
MODELS_DIR = "/models"  # where the Deployment's container finds the repository
KSERVE_MODELS_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
QUEUE_METRIC = "triton_queue_time_per_request_us"
DEFAULT_IMAGE = "engineforge-triton:latest"
DEFAULT_OUT = "deploy/k8s"
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # Service and InferenceService names
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # claims and secrets
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_S3_ENDPOINT = re.compile(r"^(https?://[^/]+)/(.+)$")  # Triton's s3://https://host:port/bucket/path form


def _check(pattern: re.Pattern[str], value: object, what: str, rule: str) -> None:
    if not isinstance(value, str) or not pattern.match(value):
        raise ConfigError(f"{what} {value!r} is invalid: {rule}")


def split_s3_uri(uri: str) -> tuple[str | None, str]:
    """(endpoint or None, s3://bucket/path): the sync tool takes the endpoint apart from the bucket."""
    rest = uri[len("s3://"):] if isinstance(uri, str) and uri.startswith("s3://") else ""
    endpoint = None
    if match := _S3_ENDPOINT.match(rest):
        endpoint, rest = match.groups()
    if not rest or rest.startswith("/") or " " in rest:
        raise ConfigError(f"S3 URI {uri!r} is invalid: use s3://bucket/path, or s3://https://host:port/bucket/path "
                          "for S3-compatible storage")
    return endpoint, f"s3://{rest.rstrip('/')}"


@dataclass(frozen=True)
class KubernetesSettings:
    """What the manifests need; validated on creation so a bad value fails here, not at `kubectl apply`."""

    model: str  # the served ensemble; readiness probes ask Triton about this model
    pvc: str | None = None  # claim holding the repository (exactly one of pvc / s3_uri)
    s3_uri: str | None = None
    s3_secret: str = "engineforge-s3"  # Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION
    s3_sync_image: str = "amazon/aws-cli:latest"
    image: str = DEFAULT_IMAGE
    name: str = ""  # Kubernetes object name; "" derives triton-<model>
    namespace: str | None = None
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 4
    queue_time_target_us: int = 10_000
    gpu: bool = False
    node_selector: tuple[tuple[str, str], ...] | None = None  # None: the GPU default with gpu, none without
    cpu: str = "1"
    memory: str = "2Gi"
    kserve: bool = False

    def __post_init__(self) -> None:
        check_model_name(self.model)
        if not self.name:
            derived = re.sub(r"[^a-z0-9-]+", "-", f"triton-{self.model.lower()}")[:63].strip("-")
            object.__setattr__(self, "name", derived)
        _check(_DNS_LABEL, self.name, "Kubernetes name", "use at most 63 lowercase letters, digits and '-', "
               "starting with a letter (e.g. --name triton-intent)")
        if self.namespace is not None:
            _check(_DNS_LABEL, self.namespace, "namespace", "use lowercase letters, digits and '-' (e.g. ml-serving)")
        if not self.image or any(c.isspace() for c in self.image):
            raise ConfigError(f"image {self.image!r} is invalid: give a reference such as registry/engineforge:0.1")
        for field in ("replicas", "min_replicas", "max_replicas", "queue_time_target_us"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field} must be an integer >= 1, got {value!r}")
        if not self.min_replicas <= self.max_replicas:
            raise ConfigError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}: "
                              "raise --max-replicas or lower --min-replicas")
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ConfigError(f"replicas {self.replicas} is outside [{self.min_replicas}, {self.max_replicas}]: "
                              "the autoscaler would move it at once; change --replicas or the bounds")
        if (self.pvc is None) == (self.s3_uri is None):
            raise ConfigError("give exactly one model repository source: --pvc NAME (a claim holding the "
                              "published repository) or --s3 URI (synced into the pod at start)")
        if self.pvc is not None:
            _check(_DNS_SUBDOMAIN, self.pvc, "PVC name", "use lowercase letters, digits, '-' and '.'")
        else:
            split_s3_uri(self.s3_uri or "")
            _check(_DNS_SUBDOMAIN, self.s3_secret, "S3 secret name", "use lowercase letters, digits, '-' and '.'")
        for field in ("cpu", "memory"):
            _check(_QUANTITY, getattr(self, field), field, "use a Kubernetes quantity such as 500m, 2 or 4Gi")
        if self.node_selector is not None:
            object.__setattr__(self, "node_selector", tuple((str(k), str(v)) for k, v in self.node_selector))

    @property
    def version_models_regex(self) -> str:
        """PromQL regex (in a PromQL string, so `\\.` is a dot) for the models of any version of the model,
        `<model>.v<N>.tokenizer|engine`: the queue time that matters is theirs, whichever version serves."""
        model = self.model.replace(".", "\\\\.")
        return f"{model}\\\\.v[0-9]+\\\\.(tokenizer|engine)"


def settings_from_repo(repo: str | os.PathLike[str], model: str | None = None, **options: Any) -> KubernetesSettings:
    """Settings for a real published model: the probes must name a model the repository serves."""
    from pathlib import Path

    from .model_layout import version_model_name
    from .published import pinned
    from .repository_watch import ensemble_steps
    from .version_switch import published_models

    if not Path(repo).is_dir():
        raise RepositoryError(f"model repository {repo} does not exist or is not a directory")
    ensembles = published_models(Path(repo))
    if not ensembles:
        raise RepositoryError(f"model repository {repo} holds no ensemble to serve: publish a model first "
                              "(build-engine ... --repo REPO)")
    if model is None:
        if len(ensembles) > 1:
            raise ConfigError(f"repository {repo} holds several ensembles {ensembles}: choose one with --model")
        model = ensembles[0]
    if model not in ensembles:
        raise ConfigError(f"repository {repo} has no ensemble {model!r}: use one of {ensembles}")
    settings = KubernetesSettings(model=model, **options)
    version = pinned(Path(repo), model)[0]
    # The models its text entry point runs: the engine (one-hop), or the tokenizer and the engine (two-hop).
    needed = dict.fromkeys([*ensemble_steps(Path(repo), model), version_model_name(model, version, "engine")])
    missing = [name for name in needed if not (Path(repo) / name).is_dir()]
    if missing:
        raise RepositoryError(f"ensemble {model!r} in {repo} lacks {missing}: publish the model again")
    return settings
