"""ShapesWorld's registration with the core (see `ella.plugins`): its UNet class, its `shapes:`
training data, its exact judge (of images, and of captions against
them), its commands, and the shipped model `ella generate` runs."""

from __future__ import annotations


def register(registry) -> None:
    registry.unet_classes["ShapesUNet2DConditionModel"] = "ella.shapes.unet:ShapesUNet2DConditionModel"
    registry.dataset_schemes["shapes"] = "ella.shapes.data:ShapesSceneDataset.from_spec"
    registry.vqa_backends["shapes"] = "ella.shapes.judge:ShapesBackend"
    registry.captioners["shapes"] = "ella.shapes.captioner:ShapesCaptioner.from_arg"
    registry.caption_checks["shapes"] = "ella.shapes.reader:agrees"
    registry.prompt_sources["shapes"] = "ella.shapes.bench:write_feedback_prompts"
    registry.planners["shapes"] = "ella.shapes.planner:plan"
    registry.cli_commands["shapes"] = "ella.shapes.cli:add_parser"
    registry.bench_commands["shapes"] = "ella.shapes.cli:add_bench_parser"
    registry.default_model = "ella.shapes.models:SHIPPED"
