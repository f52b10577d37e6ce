"""diffusers' own pipeline contract (`PipelineTesterMixin`, tests/pipelines/testing_utils in
diffusers' repository) run on the four ELLA pipelines with `ella.testing`'s tiny components.

Not part of our suite: `run.sh` copies this file into a checkout of diffusers' tests
(tests/pipelines/ella_contract/) and runs it there, against the installed diffusers. Our own
tests of the same behaviours are tests/test_pipeline_contract.py.
"""

import random

import diffusers.pipelines
import numpy as np
import pytest
import torch
from PIL import Image

from ella import (
    ELLAStableDiffusionImg2ImgPipeline,
    ELLAStableDiffusionInpaintPipeline,
    ELLAStableDiffusionPipeline,
    ELLAStableDiffusionXLPipeline,
)
from ella.testing import tiny_components, tiny_sdxl_components

from ..pipeline_params import (
    TEXT_GUIDED_IMAGE_INPAINTING_BATCH_PARAMS,
    TEXT_GUIDED_IMAGE_INPAINTING_PARAMS,
    TEXT_GUIDED_IMAGE_VARIATION_BATCH_PARAMS,
    TEXT_GUIDED_IMAGE_VARIATION_PARAMS,
    TEXT_TO_IMAGE_BATCH_PARAMS,
    TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS,
    TEXT_TO_IMAGE_PARAMS,
)
from ..testing_utils import BasePipelineTesterConfig, PipelineTesterMixin

PIPELINES = (ELLAStableDiffusionPipeline, ELLAStableDiffusionImg2ImgPipeline, ELLAStableDiffusionInpaintPipeline,
             ELLAStableDiffusionXLPipeline)
# diffusers' encode_prompt test reads the names `encode_prompt` returns from the class it finds
# under `diffusers.pipelines`: ours are registered there for this run only.
for _cls in PIPELINES:
    setattr(diffusers.pipelines, _cls.__name__, _cls)


def _image(size=16, mask=False):
    rng = random.Random(0)
    if mask:
        array = np.zeros((size, size), dtype=np.uint8)
        array[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
        return Image.fromarray(array)
    return Image.fromarray(np.array([[[rng.randrange(256) for _ in range(3)] for _ in range(size)]
                                     for _ in range(size)], dtype=np.uint8))


class _Config(BasePipelineTesterConfig):
    callback_cfg_params = TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS
    output_shape = (3, 16, 16)

    def get_dummy_components(self):
        return self.every_component(tiny_components(with_clip=True))

    def every_component(self, given: dict) -> dict:
        """Every component the pipeline takes, None where the tiny set has none (as diffusers'
        own dummy components list `safety_checker: None`)."""
        expected, _ = self.pipeline_class._get_signature_keys(self.pipeline_class)
        return {**dict.fromkeys(expected), **given}

    def get_dummy_inputs(self):
        return {"prompt": "a large red circle on the left", "generator": self.get_generator(0),
                "num_inference_steps": 2, "guidance_scale": 6.0, "output_type": "pt"}

    @pytest.mark.skip(reason="as in diffusers' own T5 pipelines (PixArt): the LLM and the connector are optional"
                      " only with prompt_embeds, so a prompt cannot run without them; the embeddings path is"
                      " test_encode_prompt_works_in_isolation here and tests/test_pipeline_contract.py in ella")
    def test_save_load_optional_components(self):
        pass


class TestELLAStableDiffusionPipeline(_Config, PipelineTesterMixin):
    pipeline_class = ELLAStableDiffusionPipeline
    required_input_params_in_call_signature = TEXT_TO_IMAGE_PARAMS
    batch_input_params = TEXT_TO_IMAGE_BATCH_PARAMS


class TestELLAStableDiffusionImg2ImgPipeline(_Config, PipelineTesterMixin):
    pipeline_class = ELLAStableDiffusionImg2ImgPipeline
    required_input_params_in_call_signature = TEXT_GUIDED_IMAGE_VARIATION_PARAMS
    batch_input_params = TEXT_GUIDED_IMAGE_VARIATION_BATCH_PARAMS

    def get_dummy_inputs(self):
        return {**super().get_dummy_inputs(), "image": _image(), "strength": 0.75}


class TestELLAStableDiffusionInpaintPipeline(_Config, PipelineTesterMixin):
    pipeline_class = ELLAStableDiffusionInpaintPipeline
    required_input_params_in_call_signature = TEXT_GUIDED_IMAGE_INPAINTING_PARAMS
    batch_input_params = TEXT_GUIDED_IMAGE_INPAINTING_BATCH_PARAMS

    def get_dummy_inputs(self):
        return {**super().get_dummy_inputs(), "image": _image(), "mask_image": _image(mask=True)}


class TestELLAStableDiffusionXLPipeline(_Config, PipelineTesterMixin):
    pipeline_class = ELLAStableDiffusionXLPipeline
    required_input_params_in_call_signature = TEXT_TO_IMAGE_PARAMS
    batch_input_params = TEXT_TO_IMAGE_BATCH_PARAMS

    def get_dummy_components(self):
        return self.every_component(tiny_sdxl_components())


def test_the_four_pipelines_are_registered():
    assert all(getattr(diffusers.pipelines, cls.__name__) is cls for cls in PIPELINES)
    assert torch.get_num_threads() >= 1
