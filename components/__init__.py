"""KFP v2 lightweight components, one per pipeline stage.

Each is ``@dsl.component(base_image=<that stage's image from images/images.json>,
install_kfp_package=False)`` with typed artifacts, and a body of a few lines that imports the
installed ``srlm`` package and calls ``srlm.steps.<stage>``: no logic lives here.
"""

from components.data import build_eft, seed_data, tiny_model
from components.evaluation import evaluate
from components.generation import build_pairs, generate_prompts, judge_candidates, merge_shards, sample_candidates
from components.images import image, images_spec
from components.registry import promote_gate, register_model, validate
from components.training import dpo, seed_sft

__all__ = [
    "build_eft", "build_pairs", "dpo", "evaluate", "generate_prompts", "image", "images_spec", "judge_candidates",
    "merge_shards", "promote_gate", "register_model", "sample_candidates", "seed_data", "seed_sft", "tiny_model", "validate",
]
