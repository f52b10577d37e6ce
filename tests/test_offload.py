"""diffusers' CPU offload with our components (the connector and ControlNet out of the chain)."""

import numpy as np
import pytest
import torch

from ella import ELLAStableDiffusionPipeline
from ella.testing import tiny_components

KW = dict(num_inference_steps=3, output_type="np", negative_prompt="a blue square")
PROMPTS = ["a red circle", "two cats"]


def images(pipe, **kw):
    return pipe(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **KW, **kw).images


def make():
    pipe = ELLAStableDiffusionPipeline(**tiny_components(with_clip=True), text_mode="flexible")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_model_cpu_offload_gives_the_same_images():
    """On a CPU-only machine the 'accelerator' is the CPU too: this checks the hooks' plumbing
    (the connector is called at every step beside the UNet, prompts encoded before), not the savings."""
    pipe = make()
    plain = images(pipe)
    pipe.enable_model_cpu_offload(device="cpu")
    np.testing.assert_allclose(images(pipe), plain, atol=1e-6)
    assert np.isfinite(images(pipe, conditioning="ella+clip")).all()
    assert "ella" not in pipe.model_cpu_offload_seq.split("->")  # not swapped out between steps


def test_weights_on_meta_until_called_as_sequential_offload_leaves_them():
    """What enable_sequential_cpu_offload does, with the CPU as the execution device (diffusers
    itself would name it "cpu:0", which accelerate cannot move tied weights to): every weight
    waits on "meta", so inputs must go to the pipeline's execution device, never a module's."""
    from accelerate import cpu_offload

    pipe = make()
    plain = images(pipe)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and name not in pipe._exclude_from_cpu_offload:
            cpu_offload(component, execution_device=torch.device("cpu"))
    assert pipe.text_encoder.device.type == "meta" and pipe._execution_device.type == "cpu"
    np.testing.assert_allclose(images(pipe), plain, atol=1e-6)
    assert np.isfinite(images(pipe, conditioning="ella+clip")).all()


@pytest.mark.gpu
@pytest.mark.parametrize("offload", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_offload_on_a_gpu(offload):
    pipe = make()
    plain = images(pipe)
    getattr(pipe, offload)()
    np.testing.assert_allclose(images(pipe), plain, atol=1e-4)
