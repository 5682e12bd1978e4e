"""The step registry: which function runs each step config, and which config a recipe's `type` names.

Steps are plain functions `fn(ctx, config) -> StepOutput` registered per config type (like torchao's `quantize_`
handlers); registering also lets recipes name the config by its `step_type`. A config type may be declared in
one layer and its function registered from a higher one (`publish`: the config is build's plain data, the function
lives in engineforge.serve), so a build asks `missing_functions` before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from engineforge.errors import ConfigError

from .config import StepConfig
from .context import BuildContext
from .step_output import StepOutput

# A step returns what it made (StepOutput); one that makes nothing may return only its report details.
StepFunction = Callable[[BuildContext, Any], StepOutput | dict[str, Any]]
_FUNCTIONS: dict[type[StepConfig], StepFunction] = {}
STEP_CONFIG_TYPES: dict[str, type[StepConfig]] = {}
ConfigType = TypeVar("ConfigType", bound=type[StepConfig])


class StepNotRegisteredError(ConfigError):
    """A build names a step whose function no module has registered (e.g. `publish` without engineforge.serve)."""


def register_config(config_type: ConfigType) -> ConfigType:
    """Let recipes name `config_type` by its `step_type` before its function is registered (publish's config)."""
    STEP_CONFIG_TYPES[config_type.step_type] = config_type
    return config_type


def register_step(config_type: type[StepConfig]) -> Callable[[StepFunction], StepFunction]:
    def decorator(fn: StepFunction) -> StepFunction:
        _FUNCTIONS[config_type] = fn
        register_config(config_type)
        return fn

    return decorator


def missing_functions(steps: Sequence[StepConfig]) -> list[str]:
    """The step types among `steps` that no function is registered for."""
    return list(dict.fromkeys(s.step_type for s in steps if type(s) not in _FUNCTIONS))


def step_function(config: StepConfig) -> StepFunction:
    try:
        return _FUNCTIONS[type(config)]
    except KeyError:
        raise StepNotRegisteredError(f"no step function registered for {type(config).__name__}") from None


def step_config_from_dict(values: dict[str, Any]) -> StepConfig:
    values = dict(values)
    step_type = values.pop("type", None)
    if step_type not in STEP_CONFIG_TYPES:
        raise ConfigError(f"unknown step type {step_type!r}; known: {sorted(STEP_CONFIG_TYPES)}")
    return STEP_CONFIG_TYPES[step_type].from_dict(values)


def config_types_in_stage_order() -> list[type[StepConfig]]:
    return sorted(STEP_CONFIG_TYPES.values(), key=lambda c: c.stage)


def stage_order() -> list[str]:
    return [c.step_type for c in config_types_in_stage_order()]
