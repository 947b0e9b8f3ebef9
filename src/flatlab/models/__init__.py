"""Models used by the SAM-family papers, built by name: `create_model("resnet18", num_classes=10)`.

`list_models()` gives the names; `width` shrinks any of them for CPU-scale runs. `forward_flops`
and `training_flops` (`flatlab.models.flops`) count a model's FLOPs per conv/linear layer.
"""

# The family modules are imported for their side effect: each registers its models.
from . import pyramidnet, resnet, small, vgg, wide_resnet  # noqa: F401
from .flops import FlopCount, forward_flops, training_flops, training_step_flops
from .registry import count_parameters, create_model, list_models, register_model

__all__ = [
    "count_parameters", "create_model", "list_models", "register_model",
    "FlopCount", "forward_flops", "training_step_flops", "training_flops",
]  # fmt: skip
