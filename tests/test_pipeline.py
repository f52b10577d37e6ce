import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

from ella import ELLA, ELLAStableDiffusionPipeline
from ella.tiny import tiny_components

PROMPTS = ["a red circle", "a big blue square to the left of a green tree on a gray background", "two cats"]


def run(pipe, prompt, seeds, **kw):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    kw.setdefault("num_inference_steps", 2)
    return pipe(prompt, generator=gens, output_type="np", **kw).images


def test_one_prompt_and_determinism(tiny_pipe):
    a = run(tiny_pipe, PROMPTS[0], [1])
    b = run(tiny_pipe, PROMPTS[0], [1])
    c = run(tiny_pipe, PROMPTS[0], [2])
    assert a.shape == (1, 16, 16, 3) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_batch_of_different_lengths_equals_per_prompt(tiny_pipe):
    batch = run(tiny_pipe, PROMPTS, [1, 2, 3], negative_prompt=["ugly", "", "blurry photo"])
    for i, (p, neg) in enumerate(zip(PROMPTS, ["ugly", "", "blurry photo"])):
        alone = run(tiny_pipe, p, [i + 1], negative_prompt=neg)
        np.testing.assert_allclose(batch[i], alone[0], atol=1e-4)


def test_num_images_per_prompt_and_cfg_off(tiny_pipe):
    imgs = run(tiny_pipe, PROMPTS[:2], [1, 2, 3, 4], num_images_per_prompt=2)
    assert imgs.shape[0] == 4
    no_cfg = run(tiny_pipe, PROMPTS[0], [1], guidance_scale=1.0)
    cfg = run(tiny_pipe, PROMPTS[0], [1], guidance_scale=7.5)
    assert not np.allclose(no_cfg, cfg)


def test_negative_prompt_changes_the_image(tiny_pipe):
    plain = run(tiny_pipe, PROMPTS[0], [1])
    neg = run(tiny_pipe, PROMPTS[0], [1], negative_prompt="a blue square")
    assert not np.allclose(plain, neg)
    explicit_empty = run(tiny_pipe, PROMPTS[0], [1], negative_prompt="")
    assert np.array_equal(plain, explicit_empty)  # the default negative prompt is ""


def test_ella_plus_clip_concatenates_tokens(tiny_pipe):
    seen = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states"].shape), with_kwargs=True)
    run(tiny_pipe, PROMPTS[0], [1], conditioning="ella+clip")
    hook.remove()
    clip_len = tiny_pipe.clip_tokenizer.model_max_length
    assert seen[0] == (2, clip_len + tiny_pipe.ella.config.num_latents, 16)
    assert not np.allclose(run(tiny_pipe, PROMPTS[0], [1], conditioning="ella+clip"), run(tiny_pipe, PROMPTS[0], [1]))


def test_pixel_space_unet_without_vae():
    pipe = ELLAStableDiffusionPipeline(**tiny_components(pixel_space=True))
    pipe.set_progress_bar_config(disable=True)
    imgs = run(pipe, PROMPTS[0], [0])
    assert imgs.shape == (1, 16, 16, 3)


@pytest.mark.parametrize("scheduler_cls", [DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_connector_runs_once_per_step_with_that_timestep(tiny_pipe, scheduler_cls):
    tiny_pipe.scheduler = scheduler_cls.from_config(tiny_pipe.scheduler.config)
    calls = []
    hook = tiny_pipe.ella.register_forward_pre_hook(lambda m, args: calls.append((args[0].shape[0], args[1])))
    run(tiny_pipe, PROMPTS[:2], [1, 2], num_inference_steps=4)
    hook.remove()
    expected = tiny_pipe.scheduler.timesteps
    assert len(calls) == len(expected) == 4
    for (batch, t), t_expected in zip(calls, expected):
        assert batch == 4  # both CFG branches of both prompts in one call
        assert float(t) == float(t_expected)


def test_mlp_connector_masks_padding_in_the_unet():
    components = tiny_components()
    components["ella"] = ELLA.from_preset("tiny", connector_type="mlp")
    pipe = ELLAStableDiffusionPipeline(**components, text_mode="flexible")
    pipe.set_progress_bar_config(disable=True)
    batch = run(pipe, PROMPTS[:2], [1, 2])
    alone = run(pipe, PROMPTS[0], [1])
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-4)


def test_bad_inputs_are_refused(tiny_pipe):
    with pytest.raises(ValueError, match="no prompt"):
        tiny_pipe([], num_inference_steps=1)
    with pytest.raises(ValueError, match="non-empty"):
        tiny_pipe("  ", num_inference_steps=1)
    with pytest.raises(ValueError, match="multiples of 4"):
        tiny_pipe("a cat", height=18, width=16, num_inference_steps=1)
    with pytest.raises(ValueError, match="conditioning"):
        tiny_pipe("a cat", conditioning="t5", num_inference_steps=1)
    tiny_pipe.ella = ELLA.from_preset("tiny", output_dim=24)
    with pytest.raises(ValueError, match="outputs width 24 but the UNet's cross-attention width is 16"):
        tiny_pipe("a cat", num_inference_steps=1)


def test_save_and_load_pipeline_folder(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    again = ELLAStableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert again.config.text_mode == "flexible"
    np.testing.assert_allclose(run(again, PROMPTS[0], [3]), run(tiny_pipe, PROMPTS[0], [3]), atol=1e-5)


def test_lora_on_the_unet_keeps_working(tiny_pipe, tmp_path):
    """The UNet is untouched by ELLA, so a LoRA added or loaded with the diffusers API applies."""
    pytest.importorskip("peft")
    from peft import LoraConfig

    plain = run(tiny_pipe, PROMPTS[0], [1])
    tiny_pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                          init_lora_weights=False), adapter_name="style")
    with_lora = run(tiny_pipe, PROMPTS[0], [1])
    assert not np.allclose(plain, with_lora)
    tiny_pipe.unet.disable_adapters()
    np.testing.assert_allclose(run(tiny_pipe, PROMPTS[0], [1]), plain, atol=1e-6)
