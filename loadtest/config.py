"""Load-test settings and how their levels are written on a command line (argparse types). Plain data with no
heavy imports, so the CLI parser stays fast."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from engineforge.defaults import DEFAULT_GRPC_URL
from engineforge.errors import ConfigError
from engineforge.grpc_channel import ClientTls, GrpcChannel

from .payloads import DEFAULT_TEXTS

DEFAULT_TIMEOUT_S = 10.0
MODES = ("text", "tokens", "generate")  # generate: streamed decoder-LM requests (loadtest/generate_*.py)


@dataclass(frozen=True)
class LoadTestConfig:
    """Everything that defines a closed-loop load test; written verbatim into the JSON report."""

    model: str
    url: str = DEFAULT_GRPC_URL
    mode: str = "text"  # "text": raw strings to the ensemble; "tokens": token ids to the engine alone
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    duration_s: float = 15.0  # measurement window per concurrency level
    warmup_s: float = 3.0  # per level, before the window; results discarded
    batch_size: int = 1  # items per request
    timeout_s: float = DEFAULT_TIMEOUT_S  # per request (gRPC deadline)
    texts: tuple[str, ...] = field(default=DEFAULT_TEXTS, repr=False)
    texts_source: str = "built-in"  # where `texts` came from, for the report
    labels: tuple[str, ...] = field(default=(), repr=False)  # expected label per text (correctness check), or ()
    seq_len: int | str = 128  # tokens mode only: a length or a distribution such as 32-256 (loadtest/lengths.py)
    token_type_ids: bool | None = None  # tokens mode: None = send it iff the model declares it
    label: str | None = None  # free-form variant name (e.g. "fp16-trt") for comparisons
    progress_every_s: float = 5.0
    drain_timeout_s: float = 5.0  # how long to wait for in-flight requests after a window closes
    # Abort when this many requests fail in a row (e.g. the server died): a closed loop of instant
    # failures would otherwise spin at full CPU until the duration is over. None disables it.
    max_consecutive_errors: int | None = 1000
    # Open loop (loadtest/open_loop.py): target request rates, one level each, instead of concurrency levels.
    rates: tuple[float, ...] = ()
    arrival: str = "constant"  # or "poisson"
    max_in_flight: int = 1024  # open loop: requests in flight at most; beyond it, sends fall behind (reported)
    # Stability windows: 0 = one window per level; N = up to N windows of duration_s until the last 3 agree on
    # throughput and p99 within stability_tolerance (perf_analyzer's criterion).
    stability_windows: int = 0
    stability_tolerance: float = 0.1
    workers: int = 1  # load-generator processes sharing each level (loadtest/workers.py); 0 = auto
    tls: ClientTls | None = None  # gRPC over TLS (CA, client certificate); travels to the worker processes
    # Generate mode (loadtest/prompts.py): prompts from a file, else synthetic ones of prompt_len words; MAX_TOKENS
    # drawn from max_tokens (None: not sent). Both in the `--seq-len` syntax.
    prompts: tuple[str, ...] = field(default=(), repr=False)
    prompts_source: str = "synthetic"
    prompt_len: int | str = 128
    max_tokens: int | str | None = 128

    def __post_init__(self) -> None:
        problems = []
        if not self.model:
            problems.append("a model name is required")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            problems.append(f"concurrency levels must be integers >= 1, got {list(self.concurrency)}")
        if not self.duration_s > 0:
            problems.append(f"duration must be > 0 s, got {self.duration_s}")
        if self.warmup_s < 0:
            problems.append(f"warm-up must be >= 0 s, got {self.warmup_s}")
        if self.batch_size < 1:
            problems.append(f"batch size must be >= 1, got {self.batch_size}")
        if not self.timeout_s > 0:
            problems.append(f"request timeout must be > 0 s, got {self.timeout_s}")
        if self.mode == "tokens":
            from .lengths import parse_lengths

            try:
                parse_lengths(self.seq_len)
            except ConfigError as exc:
                problems.append(str(exc))
        if self.mode == "generate":
            problems.extend(_generate_problems(self))
        if self.labels and len(self.labels) != len(self.texts):
            problems.append(f"{len(self.labels)} expected labels for {len(self.texts)} texts")
        if self.labels and self.mode != "text":
            problems.append("expected labels are checked in text mode only (tokens mode sends synthetic ids)")
        if self.mode == "text" and not self.texts:
            problems.append("no payload texts")
        if any(not r > 0 for r in self.rates):
            problems.append(f"rates must be > 0 req/s, got {list(self.rates)}")
        if self.arrival not in ("constant", "poisson"):
            problems.append(f"arrival must be constant or poisson, got {self.arrival!r}")
        if self.stability_windows < 0 or not 0 < self.stability_tolerance < 1:
            problems.append(f"stability: windows >= 0 and tolerance in (0, 1), got {self.stability_windows}, "
                            f"{self.stability_tolerance}")
        if not 0 <= self.workers <= 64:
            problems.append(f"workers must be between 1 and 64 processes (0: auto), got {self.workers}")
        if self.max_in_flight < 1:
            problems.append(f"max in flight must be >= 1, got {self.max_in_flight}")
        if problems:
            raise ConfigError("invalid load-test settings: " + "; ".join(problems))

    def channel(self) -> GrpcChannel:
        """How every connection of the run is opened: request functions, server check, statistics reader."""
        return GrpcChannel(self.url, self.tls)

    @property
    def estimated_runtime_s(self) -> float:
        return len(self.rates or self.concurrency) * (self.warmup_s + self.duration_s)

    def to_dict(self) -> dict[str, Any]:
        hidden = ("texts", "labels", "prompts")  # payloads: counted, not copied into the report
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in hidden}
        data["labels_checked"] = bool(self.labels)
        data["concurrency"] = list(self.concurrency)
        data["rates"] = list(self.rates)
        data["n_texts"] = len(self.texts)
        data["n_prompts"] = len(self.prompts)
        data["tls"] = self.tls.to_dict() if self.tls is not None else None
        return data


def _generate_problems(config: LoadTestConfig) -> list[str]:
    """What generate mode cannot run with (one prompt per streamed request; lengths in the `--seq-len` syntax)."""
    from .lengths import parse_lengths  # numpy: only when generate mode is asked for
    from .prompts import length_spec

    problems = [] if config.batch_size == 1 else [f"generate mode streams one prompt per request: use --batch-size 1, "
                                                  f"not {config.batch_size}"]
    for flag, spec in (("--prompt-len", config.prompt_len), ("--max-tokens", config.max_tokens)):
        if spec is None:
            continue
        try:
            parse_lengths(length_spec(spec))
        except ConfigError as exc:
            problems.append(f"{flag}: {exc}")
    return problems


def parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,4,16, got {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError(f"concurrency levels must be integers >= 1, got {text!r}")
    return levels


def parse_workers(text: str) -> int:
    """'auto' -> 0 (grow on demand), else a process count >= 1."""
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"workers: give a process count >= 1 or 'auto', got {text!r}")
    return value


def parse_rates(text: str) -> tuple[float, ...]:
    """"50,100,200" -> (50.0, 100.0, 200.0); a range "50:200:50" (start:stop:step, stop included) too."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if not (start > 0 and step > 0 and stop >= start):
                raise ValueError
            rates = tuple(round(start + i * step, 6) for i in range(int((stop - start) / step + 1e-9) + 1))
        else:
            rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates: give req/s like 50,100,200 or 50:200:50, got {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be > 0 req/s, got {text!r}")
    return rates
