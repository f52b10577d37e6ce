import threading

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from ella import ELLA, ELLAStableDiffusionPipeline
from ella.testing import tiny_components

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


@pytest.mark.parametrize("scheduler_cls", [EulerAncestralDiscreteScheduler, DDPMScheduler])
def test_stochastic_schedulers_draw_their_step_noise_from_the_generator(tiny_pipe, scheduler_cls):
    # These samplers add fresh noise at every step: a seed must fix it too, image by image.
    tiny_pipe.scheduler = scheduler_cls.from_config(tiny_pipe.scheduler.config)
    a = run(tiny_pipe, PROMPTS[:2], [1, 2], num_inference_steps=3)
    torch.manual_seed(123)  # the global RNG must not matter
    b = run(tiny_pipe, PROMPTS[:2], [1, 2], num_inference_steps=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(run(tiny_pipe, PROMPTS[1], [2], num_inference_steps=3)[0], a[1], atol=1e-4)


def test_ddim_eta_reaches_the_scheduler(tiny_pipe):
    tiny_pipe.scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    plain = run(tiny_pipe, PROMPTS[0], [1], num_inference_steps=3)
    assert np.array_equal(plain, run(tiny_pipe, PROMPTS[0], [1], num_inference_steps=3, eta=0.0))
    noisy = run(tiny_pipe, PROMPTS[0], [1], num_inference_steps=3, eta=1.0)
    assert not np.allclose(plain, noisy)
    np.testing.assert_array_equal(noisy, run(tiny_pipe, PROMPTS[0], [1], num_inference_steps=3, eta=1.0))


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


def test_callback_on_step_end_sees_and_replaces_the_latents(tiny_pipe):
    seen = []

    def record(pipe, step, timestep, tensors):
        seen.append((step, int(timestep), tensors["latents"].shape))
        return tensors

    plain = run(tiny_pipe, PROMPTS[:1], [1], num_inference_steps=3)
    assert np.array_equal(run(tiny_pipe, PROMPTS[:1], [1], num_inference_steps=3, callback_on_step_end=record), plain)
    assert [step for step, _, _ in seen] == [0, 1, 2]
    assert [t for _, t, _ in seen] == tiny_pipe.scheduler.timesteps.tolist()
    zeroed = run(tiny_pipe, PROMPTS[:1], [1], num_inference_steps=3,
                 callback_on_step_end=lambda pipe, step, t, tensors: {"latents": torch.zeros_like(tensors["latents"])})
    assert not np.array_equal(zeroed, plain)
    with pytest.raises(ValueError, match="can only name"):
        tiny_pipe("a cat", num_inference_steps=1, callback_on_step_end=record,
                  callback_on_step_end_tensor_inputs=["noise_pred"])


def test_render_draws_both_sides_at_once_as_one_after_the_other(tiny_pipe):
    from ella.generate import COMPARE, render

    threads, drawn_on = torch.get_num_threads(), set()
    tiny_pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(tiny_pipe.scheduler.config)  # draws step noise
    together = render(tiny_pipe, PROMPTS[1], COMPARE, 5, 2, 3, 5.0, height=16, width=16,
                      callback_on_step_end=lambda pipe, step, t, tensors: drawn_on.add(threading.current_thread().name)
                      or tensors)
    assert len(drawn_on) == 2 and all(name.startswith("ella-render") for name in drawn_on)  # a thread per side
    assert torch.get_num_threads() == threads  # shared out while drawing, then given back
    for conditioning in COMPARE:
        torch.set_num_threads(max(1, threads // len(COMPARE)))  # as each side had them
        try:
            alone = render(tiny_pipe, PROMPTS[1], (conditioning,), 5, 2, 3, 5.0, height=16, width=16)[conditioning]
        finally:
            torch.set_num_threads(threads)
        assert [np.asarray(a).tolist() for a in together[conditioning]] == [np.asarray(a).tolist() for a in alone]
    assert np.asarray(together["clip"][0]).tolist() != np.asarray(together["ella"][0]).tolist()


@pytest.mark.parametrize("scheduler_cls", [DPMSolverMultistepScheduler, HeunDiscreteScheduler])
def test_precomputed_connector_gives_the_per_step_images_in_one_call(tiny_pipe, scheduler_cls):
    tiny_pipe.scheduler = scheduler_cls.from_config(tiny_pipe.scheduler.config)
    per_step = run(tiny_pipe, PROMPTS[:2], [1, 2], num_inference_steps=3, conditioning="ella+clip")
    calls = []
    hook = tiny_pipe.ella.register_forward_pre_hook(lambda m, args: calls.append((args[0].shape[0], args[1])))
    once = run(tiny_pipe, PROMPTS[:2], [1, 2], num_inference_steps=3, conditioning="ella+clip", precompute_connector=True)
    hook.remove()
    np.testing.assert_allclose(once, per_step, atol=1e-5)
    distinct = torch.unique(tiny_pipe.scheduler.timesteps)  # Heun visits most timesteps twice
    assert len(calls) == 1
    batch, t = calls[0]
    assert batch == 4 * len(distinct)  # every distinct timestep x both CFG branches x both prompts
    assert sorted(set(t.tolist())) == distinct.tolist()


def test_precomputed_connector_without_timestep_runs_once_for_all_steps():
    components = tiny_components()
    components["ella"] = ELLA.from_preset("tiny", connector_type="resampler")
    pipe = ELLAStableDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    pipe.ella.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    once = run(pipe, PROMPTS[0], [1], num_inference_steps=3, precompute_connector=True)
    assert calls == [2]
    np.testing.assert_allclose(once, run(pipe, PROMPTS[0], [1], num_inference_steps=3), atol=1e-5)


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
    with pytest.raises(ValueError, match="positive multiples"):  # 0 is not "the default size"
        tiny_pipe("a cat", height=0, width=16, num_inference_steps=1)
    with pytest.raises(ValueError, match="conditioning"):
        tiny_pipe("a cat", conditioning="t5", num_inference_steps=1)
    with pytest.raises(ValueError, match="finite"):  # NaN guidance would give blank images
        tiny_pipe("a cat", guidance_scale=float("nan"), num_inference_steps=1)
    with pytest.raises(ValueError, match="of at least 1"):
        tiny_pipe("a cat", num_inference_steps=0)
    with pytest.raises(ValueError, match="of at least 1"):
        tiny_pipe("a cat", num_images_per_prompt=0, num_inference_steps=1)
    with pytest.raises(ValueError, match="got 3 generators for 2 images"):
        tiny_pipe("a cat", num_images_per_prompt=2, generator=[torch.Generator()] * 3, num_inference_steps=1)
    tiny_pipe.ella = ELLA.from_preset("tiny", output_dim=24)
    with pytest.raises(ValueError, match="outputs width 24 but the UNet's cross-attention width is 16"):
        tiny_pipe("a cat", num_inference_steps=1)


def test_save_and_load_pipeline_folder(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    again = ELLAStableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert again.config.text_mode == "flexible"
    np.testing.assert_allclose(run(again, PROMPTS[0], [3]), run(tiny_pipe, PROMPTS[0], [3]), atol=1e-5)


def test_text_echo_reaches_the_encoder_and_is_saved(tmp_path):
    pipe = ELLAStableDiffusionPipeline(**tiny_components(), text_mode="flexible", text_echo=True)
    pipe.save_pretrained(tmp_path / "pipe")
    again = ELLAStableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert again.config.text_echo is True
    echo = again.encode_llm(PROMPTS[:2])
    again.register_to_config(text_echo=False)
    once = again.encode_llm(PROMPTS[:2])
    assert torch.equal(echo.attention_mask, once.attention_mask)  # same tokens, read a second time
    assert (echo.hidden_states - once.hidden_states).abs().max() > 1e-4


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


def _controlnet_pipe():
    from diffusers import ControlNetModel

    components = tiny_components()
    # the tiny VAE downsamples 2x: a one-level conditioning embedding matches the latents
    components["controlnet"] = ControlNetModel.from_unet(components["unet"], conditioning_embedding_out_channels=(8, 8))
    pipe = ELLAStableDiffusionPipeline(**components, text_mode="flexible")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_controlnet_steers_the_unet():
    pipe = _controlnet_pipe()
    for zero_init in (pipe.controlnet.controlnet_cond_embedding.conv_out, pipe.controlnet.controlnet_mid_block):
        torch.nn.init.normal_(zero_init.weight, std=0.5)  # ControlNet's zero init would be a no-op
    control = np.zeros((16, 16, 3), np.float32)
    control[4:12, 4:12] = 1.0
    seen = []
    hook = pipe.controlnet.register_forward_pre_hook(lambda m, a, k: seen.append(k["controlnet_cond"].shape), with_kwargs=True)
    on = run(pipe, PROMPTS[:2], [1, 2], image=control)
    hook.remove()
    assert seen[0] == (4, 3, 16, 16)  # one control image, both prompts, both CFG branches
    off = run(pipe, PROMPTS[:2], [1, 2], image=control, controlnet_conditioning_scale=0.0)
    other = run(pipe, PROMPTS[:2], [1, 2], image=1.0 - control)
    assert not np.allclose(on, off) and not np.allclose(on, other)
    plain = ELLAStableDiffusionPipeline(**{k: v for k, v in pipe.components.items() if k != "controlnet"},
                                        text_mode="flexible")
    plain.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(off, run(plain, PROMPTS[:2], [1, 2]), atol=1e-5)  # scale 0 = no ControlNet
    with pytest.raises(ValueError, match="pass a control `image`"):
        pipe("a cat", num_inference_steps=1)
    with pytest.raises(ValueError, match="no controlnet"):
        plain("a cat", image=control, num_inference_steps=1)
    with pytest.raises(ValueError, match="3 control images for 2 prompts"):
        pipe(PROMPTS[:2], image=[control] * 3, num_inference_steps=1)


def test_sdxl_pipeline_ella_and_ella_plus_clip():
    from ella import ELLAStableDiffusionXLPipeline
    from ella.testing import tiny_sdxl_components

    pipe = ELLAStableDiffusionXLPipeline(**tiny_sdxl_components(), text_mode="flexible")
    pipe.set_progress_bar_config(disable=True)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, k: seen.append(
        (k["encoder_hidden_states"].shape, k["added_cond_kwargs"]["text_embeds"].shape,
         k["added_cond_kwargs"]["time_ids"][0].tolist())), with_kwargs=True)
    ella_only = run(pipe, PROMPTS[:2], [1, 2])
    both = run(pipe, PROMPTS[:2], [1, 2], conditioning="ella+clip")
    hook.remove()
    assert seen[0] == ((4, 4, 32), (4, 16), [16, 16, 0, 0, 16, 16])
    assert seen[-1][0] == (4, 16 + 4, 32)  # 16 CLIP tokens (two encoders side by side) + 4 latents
    assert ella_only.shape == (2, 16, 16, 3) and not np.allclose(ella_only, both)
    batch_alone = run(pipe, PROMPTS[1], [2])
    np.testing.assert_allclose(ella_only[1], batch_alone[0], atol=1e-4)

    # without the second CLIP encoder: pure ELLA with SDXL's zero pooled embedding
    no_clip = ELLAStableDiffusionXLPipeline(**tiny_sdxl_components(with_clip=False), text_mode="flexible")
    no_clip.set_progress_bar_config(disable=True)
    assert np.isfinite(run(no_clip, PROMPTS[0], [1])).all()
    with pytest.raises(ValueError, match="needs clip_text_encoder_2"):
        no_clip("a cat", conditioning="ella+clip", num_inference_steps=1)
    with pytest.raises(ValueError, match="use ELLAStableDiffusionXLPipeline"):
        ELLAStableDiffusionPipeline(**tiny_sdxl_components(with_clip=False))("a cat", num_inference_steps=1)


def test_load_pipeline_picks_the_sdxl_pipeline_and_round_trips(tmp_path):
    """An SDXL-layout model folder + connector + LLM assemble into the XL pipeline (with SDXL's
    CLIP encoders for the pooled embedding); its saved folder loads back as the XL pipeline."""
    from ella import ELLAStableDiffusionXLPipeline
    from ella.pipelines.loading import load_pipeline
    from ella.testing import tiny_sdxl_components

    parts = tiny_sdxl_components()
    sdxl = tmp_path / "sdxl"
    for name, sub in (("unet", "unet"), ("vae", "vae"), ("scheduler", "scheduler"), ("clip_text_encoder", "text_encoder"),
                      ("clip_tokenizer", "tokenizer"), ("clip_text_encoder_2", "text_encoder_2"),
                      ("clip_tokenizer_2", "tokenizer_2")):
        parts[name].save_pretrained(sdxl / sub)
    parts["ella"].save_pretrained(tmp_path / "connector")
    parts["text_encoder"].save_pretrained(tmp_path / "llm")
    parts["tokenizer"].save_pretrained(tmp_path / "llm")
    pipe = load_pipeline(str(sdxl), ella=str(tmp_path / "connector"), llm=str(tmp_path / "llm"), device="cpu",
                         text_mode="flexible")
    assert isinstance(pipe, ELLAStableDiffusionXLPipeline) and pipe.clip_text_encoder_2 is not None
    pipe.set_progress_bar_config(disable=True)
    first = run(pipe, PROMPTS[0], [1], conditioning="ella+clip")
    pipe.save_pretrained(tmp_path / "saved")
    again = load_pipeline(str(tmp_path / "saved"), device="cpu")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again, ELLAStableDiffusionXLPipeline)
    np.testing.assert_allclose(run(again, PROMPTS[0], [1], conditioning="ella+clip"), first, atol=1e-5)


def test_prompt_embeds_from_encode_prompt_run_without_the_llm(tiny_pipe):
    """The low-memory recipe: encode with the LLM once, drop it, generate from the tensors. CFG on,
    two prompts of different lengths in flexible mode: exactly the images of the full pipeline."""
    prompts = PROMPTS[:2]
    embeds, mask, neg_embeds, neg_mask = tiny_pipe.encode_prompt(prompts, negative_prompt="blurry photo")
    assert embeds.ndim == 3 and mask.shape == embeds.shape[:2] and mask[0].sum() < mask[1].sum()
    assert neg_embeds.shape[0] == 2 and neg_mask.shape == neg_embeds.shape[:2]
    full = run(tiny_pipe, prompts, [1, 2], negative_prompt="blurry photo", guidance_scale=5.0)
    no_llm = ELLAStableDiffusionPipeline(**{**tiny_pipe.components, "text_encoder": None, "tokenizer": None},
                                         text_mode="flexible")
    no_llm.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    images = no_llm(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=neg_embeds,
                    negative_prompt_attention_mask=neg_mask, guidance_scale=5.0, num_inference_steps=2,
                    generator=gens, output_type="np").images
    np.testing.assert_array_equal(images, full)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):  # CFG needs the negative side too
        no_llm(prompt_embeds=embeds, prompt_attention_mask=mask, guidance_scale=5.0, num_inference_steps=1)
    with pytest.raises(ValueError, match="text_encoder and tokenizer"):
        no_llm("a red circle", num_inference_steps=1)


def test_prompt_embeds_with_clip_need_the_prompt_text(tiny_pipe):
    embeds, mask, neg, neg_mask = tiny_pipe.encode_prompt(PROMPTS[:1])
    kw = dict(prompt_attention_mask=mask, negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask,
              num_inference_steps=1, conditioning="ella+clip", output_type="np")
    with pytest.raises(ValueError, match="pass `prompt` as well"):  # never a placeholder prompt through CLIP
        tiny_pipe(prompt_embeds=embeds, **kw)
    gens = [torch.Generator().manual_seed(3)]
    with_text = tiny_pipe(PROMPTS[:1], prompt_embeds=embeds, generator=gens, **kw).images
    gens = [torch.Generator().manual_seed(3)]
    plain = tiny_pipe(PROMPTS[:1], generator=gens, **{k: v for k, v in kw.items() if "negative" not in k
                                                       and "attention" not in k}).images
    np.testing.assert_array_equal(with_text, plain)
    with pytest.raises(ValueError, match="must be a tensor"):
        tiny_pipe(prompt_embeds=[[0.0]], num_inference_steps=1)


def test_latents_output_type_latent_and_return_dict(tiny_pipe):
    shape = (1, tiny_pipe.unet.config.in_channels, 8, 8)  # the tiny VAE halves 16 px
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    out = tiny_pipe(PROMPTS[0], latents=latents, num_inference_steps=2, output_type="latent")
    assert out.images.shape == shape and not torch.equal(out.images, latents)
    images = tiny_pipe(PROMPTS[0], latents=latents, num_inference_steps=2, output_type="np", return_dict=False)
    assert isinstance(images, tuple) and len(images) == 1 and images[0].shape == (1, 16, 16, 3)
    # the same latents give the same image; the decoder is what turns the returned latents into it
    again = tiny_pipe(PROMPTS[0], latents=latents, num_inference_steps=2, output_type="np").images
    np.testing.assert_array_equal(images[0], again)
    decoded = tiny_pipe.decode_latents(out.images, "np")
    np.testing.assert_allclose(decoded, again, atol=1e-6)
    with pytest.raises(ValueError, match="latents must have shape"):
        tiny_pipe(PROMPTS[0], latents=torch.randn(1, 4, 4, 4), num_inference_steps=1)
