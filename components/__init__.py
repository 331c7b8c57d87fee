"""KFP v2 lightweight components, one per pipeline stage of the registry (``srlm.stages.TASKS``).

Each is ``@dsl.component(base_image=<that stage's image from images/images.json>,
install_kfp_package=False)`` with typed artifacts, named after its stage, and a body of a few
lines that imports the installed ``srlm`` package and calls ``srlm.stages.run_task``: no logic here.
"""

from components.data import build_eft, seed, tiny_model
from components.evaluation import evaluate
from components.generation import judge, merge, pairs, prompts, sample
from components.images import image, images_spec
from components.registry import finalize, gate, register, validate
from components.training import dpo, sft

__all__ = [
    "build_eft", "dpo", "evaluate", "finalize", "gate", "image", "images_spec", "judge", "merge", "pairs", "prompts", "register",
    "sample", "seed", "sft", "tiny_model", "validate",
]
