"""Every build step, one module per step type (the module is named after the step's `step_type`).

Each module (or package, for a step with helpers) holds its config dataclass and its registered function, which
returns what the step made (`step_output.StepOutput`). This list is the only place that imports them: importing
`engineforge.build.steps` registers every step, so recipes can name them. `publish` is the exception: its function
writes a Triton repository, so the serve layer registers it (engineforge.serve.publish_step).
Listed in pipeline order.
"""

from .prune import PruneConfig, prune  # noqa: I001  (pipeline order, not alphabetical)
from .distill import DistillConfig, distill
from .bnb_4bit import Bnb4BitConfig, plan_bnb_modules, quantize_bnb_4bit
from .export import ExportConfig, export_onnx
from .graph_optimize import GraphOptimizeConfig, optimize_graph
from .dynamic_int8 import DynamicInt8Config, quantize_dynamic_int8
from .static_int8 import StaticInt8Config, quantize_static_int8
from .int4_weight_only import Int4WeightOnlyConfig, quantize_int4_weight_only
from .select_runtime import SelectRuntimeConfig, select_runtime
from .compile import CompileConfig, compile_engine
from .plan_serving import PlanServingConfig, plan_serving
from .validate import ValidateConfig, validate_accuracy
from .publish import PublishConfig

__all__ = [
    "Bnb4BitConfig", "CompileConfig", "DistillConfig", "DynamicInt8Config", "ExportConfig", "GraphOptimizeConfig",
    "Int4WeightOnlyConfig", "PlanServingConfig", "PruneConfig", "PublishConfig", "SelectRuntimeConfig",
    "StaticInt8Config", "ValidateConfig", "compile_engine", "distill", "export_onnx", "optimize_graph",
    "plan_bnb_modules", "plan_serving", "prune", "quantize_bnb_4bit", "quantize_dynamic_int8",
    "quantize_int4_weight_only", "quantize_static_int8", "select_runtime", "validate_accuracy",
]
