"""diffusers' pipeline contract, on all four pipelines with tiny components: what tools built on
diffusers read from a pipeline's signature and rely on at call time (the behaviours of
diffusers' own `PipelineTesterMixin`; docs/pipeline.md says where it was run on them)."""

import inspect
import os

import numpy as np
import pytest
import torch
from diffusers.callbacks import SDCFGCutoffCallback
from PIL import Image

from ella import (
    ELLA,
    ELLAStableDiffusionImg2ImgPipeline,
    ELLAStableDiffusionInpaintPipeline,
    ELLAStableDiffusionPipeline,
    ELLAStableDiffusionXLPipeline,
)
from ella.testing import tiny_components, tiny_sdxl_components


def _image(value: int) -> Image.Image:
    rng = np.random.default_rng(value)
    return Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


def _mask() -> Image.Image:
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    return Image.fromarray(mask)


CASES = {  # name: (class, components, extra inputs, diffusers' names its signature must hold)
    "sd": (ELLAStableDiffusionPipeline, lambda: tiny_components(with_clip=True), dict, set()),
    "img2img": (ELLAStableDiffusionImg2ImgPipeline, lambda: tiny_components(with_clip=True),
                lambda: dict(image=_image(0), strength=0.75), {"image", "strength"}),
    "inpaint": (ELLAStableDiffusionInpaintPipeline, lambda: tiny_components(with_clip=True),
                lambda: dict(image=_image(0), mask_image=_mask()), {"image", "mask_image", "strength"}),
    "sdxl": (ELLAStableDiffusionXLPipeline, tiny_sdxl_components, dict,
             {"pooled_prompt_embeds", "negative_pooled_prompt_embeds"}),
}
DIFFUSERS_NAMES = {  # text-to-image's, the required optional ones, and the conventions users reach for
    "prompt", "height", "width", "guidance_scale", "negative_prompt", "prompt_embeds", "negative_prompt_embeds",
    "cross_attention_kwargs", "num_inference_steps", "num_images_per_prompt", "generator", "latents",
    "output_type", "return_dict", "callback_on_step_end", "callback_on_step_end_tensor_inputs",
    "guidance_rescale", "clip_skip", "eta", "timesteps", "sigmas", "ip_adapter_image", "ip_adapter_image_embeds",
}


def make(name: str, **overrides):
    cls, components, _, _ = CASES[name]
    pipe = cls(**{**components(), **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(name: str, seed: int = 0, **kw) -> dict:
    base = dict(prompt="a large red circle on the left", generator=torch.Generator().manual_seed(seed),
                num_inference_steps=3, guidance_scale=6.0, output_type="pt")
    return {**base, **CASES[name][2](), **kw}


def out(pipe, name, **kw) -> torch.Tensor:
    return pipe(**inputs(name, **kw))[0]


@pytest.fixture(params=list(CASES))
def case(request):
    return request.param


def test_the_signature_holds_diffusers_names_with_their_defaults(case):
    cls, _, _, own = CASES[case]
    parameters = inspect.signature(cls.__call__).parameters
    assert not [p for p in parameters.values() if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    assert DIFFUSERS_NAMES | own <= set(parameters)
    assert all(parameters[n].default is not inspect.Parameter.empty for n in set(parameters) - {"self"})
    assert parameters["num_inference_steps"].default == 50 and parameters["output_type"].default == "pil"
    if "strength" in own:  # diffusers' img2img and inpaint defaults
        assert parameters["strength"].default == (1.0 if "mask_image" in own else 0.8)
    assert set(cls._callback_tensor_inputs) == {"latents", "prompt_embeds", "negative_prompt_embeds"}


def test_callbacks_read_every_listed_tensor_and_replace_each(case):
    pipe = make(case)
    plain = out(pipe, case)
    seen = []

    def read_all(pipe, step, t, tensors):
        assert set(tensors) == set(pipe._callback_tensor_inputs)
        seen.append({k: v.shape for k, v in tensors.items()})
        return tensors

    same = out(pipe, case, callback_on_step_end=read_all,
               callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    assert torch.equal(same, plain) and len(seen) == pipe.num_timesteps
    rows = seen[0]["latents"][0]
    assert seen[0]["prompt_embeds"][0] == 2 * rows and seen[0]["negative_prompt_embeds"][0] == rows

    def replace(name, value):
        def callback(pipe, step, t, tensors):
            return {**tensors, name: value(tensors[name])} if step == 0 else tensors
        return out(pipe, case, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=[name])

    for name in pipe._callback_tensor_inputs:
        assert torch.equal(replace(name, torch.clone), plain), name  # the same values: the same images
        assert not torch.allclose(replace(name, lambda x: x + 1.0), plain), name  # others: other images
    zeroed = out(pipe, case, output_type="latent",
                 callback_on_step_end=lambda p, i, t, k: {"latents": torch.zeros_like(k["latents"])})
    assert zeroed.abs().sum() == 0


def test_callbacks_may_change_guidance_and_cut_cfg_off(case):
    pipe = make(case)

    def more_guidance(pipe, step, t, tensors):
        pipe._guidance_scale += 1.0
        return tensors

    out(pipe, case, guidance_scale=2.0, callback_on_step_end=more_guidance)
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps  # read at every step, as diffusers' test checks
    plain = out(pipe, case)
    cut = out(pipe, case, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_index=0, cutoff_step_ratio=None))
    assert cut.shape == plain.shape and torch.isfinite(cut).all() and not torch.allclose(cut, plain)
    assert pipe.guidance_scale == 0.0  # diffusers' PipelineCallback set it, and the loop went on without CFG


def test_a_batch_gives_each_prompt_its_single_image(case):
    pipe = make(case)
    single = out(pipe, case)
    prompts = ["a large red circle on the left", "a blue square", "very long " * 60]
    batch = pipe(**inputs(case, prompt=prompts, generator=[torch.Generator().manual_seed(i) for i in range(3)]))[0]
    assert batch.shape[0] == 3
    torch.testing.assert_close(batch[0], single[0], atol=1e-4, rtol=0)
    assert pipe(**inputs(case, num_images_per_prompt=2, prompt=prompts[:2]))[0].shape[0] == 4


def test_dict_and_tuple_outputs_are_equal(case):
    pipe = make(case)
    assert torch.equal(pipe(**inputs(case)).images, pipe(**inputs(case), return_dict=False)[0])


def test_save_and_load_round_trip_gives_the_same_images(case, tmp_path):
    pipe = make(case)
    pipe.save_pretrained(tmp_path)
    again = CASES[case][0].from_pretrained(tmp_path)
    again.set_progress_bar_config(disable=True)
    assert torch.equal(out(again, case), out(pipe, case))


def test_dtype_moves_reach_every_component(case):
    pipe = make(case)
    modules = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    assert {m.dtype for m in modules.values()} == {torch.float32}
    pipe.to(dtype=torch.bfloat16)
    assert {k: m.dtype for k, m in modules.items()} == {k: torch.bfloat16 for k in modules}
    assert torch.isfinite(out(pipe, case).float()).all()


def test_encode_prompt_alone_then_the_pipeline_without_text_components(case):
    cls, components, _, _ = CASES[case]
    parts = components()
    text_only = cls(**{k: (v if "text" in k or "tokenizer" in k else None) for k, v in parts.items()})
    encoded = text_only.encode_prompt("a large red circle on the left", negative_prompt=None)
    names = ["prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask"]
    if case == "sdxl":
        names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        assert encoded[4] is not None and encoded[5] is not None
    no_text = cls(**{k: (None if "text" in k or "tokenizer" in k else v) for k, v in parts.items()})
    no_text.set_progress_bar_config(disable=True)
    kw = {k: v for k, v in inputs(case).items() if k != "prompt"}
    from_embeds = no_text(**kw, **dict(zip(names, encoded)))[0]
    torch.testing.assert_close(from_embeds, out(make(case), case), atol=1e-5, rtol=0)


def test_lora_scale_through_cross_attention_kwargs(case):
    from peft import LoraConfig

    pipe = make(case)
    without = out(pipe, case)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    assert not torch.allclose(out(pipe, case), without, atol=1e-4)
    torch.testing.assert_close(out(pipe, case, cross_attention_kwargs={"scale": 0.0}), without, atol=1e-6, rtol=0)


def test_guidance_rescale_zero_is_the_plain_image(case):
    pipe = make(case)
    plain = out(pipe, case)
    assert torch.equal(out(pipe, case, guidance_rescale=0.0), plain)
    assert not torch.allclose(out(pipe, case, guidance_rescale=0.7), plain)


def test_interrupt_stops_after_the_step_it_is_set_on(case):
    pipe = make(case)
    steps, kept = [], {}

    def stop_at_one(pipe, step, t, tensors):
        steps.append(step)
        if step == 1:
            kept["latents"] = tensors["latents"].clone()
            pipe._interrupt = True
        return tensors

    latents = out(pipe, case, num_inference_steps=5, output_type="latent", callback_on_step_end=stop_at_one)
    assert steps == [0, 1] and torch.equal(latents, kept["latents"])
    steps.clear()
    out(pipe, case, num_inference_steps=3, callback_on_step_end=lambda p, i, t, k: steps.append(i) or k)
    assert steps == list(range(pipe.num_timesteps)) and pipe.num_timesteps >= 2  # the next call starts afresh


def test_optional_components_none_with_prompt_embeds_survive_save_and_load(case, tmp_path):
    """diffusers' save/load test of optional components, as its T5 pipelines need it: without the
    LLM (and the CLIP encoders), the prompts come as embeddings."""
    pipe = make(case)
    kw = {k: v for k, v in inputs(case).items() if k != "prompt"}
    names = ["prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask",
             "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    embeds = dict(zip(names, pipe.encode_prompt("a large red circle on the left")))
    dropped = [name for name in pipe._optional_components if "text" in name or "tokenizer" in name
               or name in ("controlnet", "image_encoder", "feature_extractor")]
    for name in dropped:
        setattr(pipe, name, None)
    before = pipe(**kw, **embeds)[0]
    pipe.save_pretrained(tmp_path)
    again = CASES[case][0].from_pretrained(tmp_path)
    again.set_progress_bar_config(disable=True)
    assert all(getattr(again, name) is None for name in dropped)
    kw["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(again(**kw, **embeds)[0], before)


def test_clip_skip_reads_an_earlier_clip_layer():
    pipe = make("sd")
    plain = out(pipe, "sd", conditioning="clip")
    assert torch.equal(out(pipe, "sd", conditioning="clip", clip_skip=None), plain)
    assert not torch.allclose(out(pipe, "sd", conditioning="clip", clip_skip=1), plain)


@pytest.mark.parametrize("kw, message", [
    (dict(prompt=5), "prompt must be a string"),
    (dict(num_inference_steps=2.5), "num_inference_steps must be a whole number"),
    (dict(guidance_scale="7"), "guidance_scale must be a finite number"),
    (dict(guidance_rescale=1.5), "guidance_rescale must be in"),
    (dict(height=16.0, width=16), "whole numbers"),
    (dict(prompt=None, prompt_embeds=torch.full((1, 4, 32), float("nan"))), "prompt_embeds hold NaN"),
])
def test_bad_call_arguments_are_one_clear_value_error(kw, message):
    with pytest.raises(ValueError, match=message):
        make("sd")(**inputs("sd", **kw))


def test_the_connector_refuses_nan_features_and_negative_timesteps():
    ella = ELLA.from_preset("tiny")
    x = torch.randn(1, 3, 32)
    with pytest.raises(ValueError, match="NaN or inf"):
        ella(torch.full_like(x, float("nan")), 10)
    with pytest.raises(ValueError, match="timesteps must be >= 0"):
        ella(x, torch.tensor([-1]))
    assert torch.isfinite(ella(x, 0)).all()


def test_variants_reach_every_component_the_connector_included(tmp_path):
    """diffusers' pipeline passes `variant` to a component only if its save_pretrained names it."""
    pipe = make("sd")
    pipe.save_pretrained(tmp_path, variant="fp16")
    for folder in ("unet", "vae", "ella", "text_encoder"):
        assert any(".fp16." in name for name in os.listdir(tmp_path / folder)), folder
    again = ELLAStableDiffusionPipeline.from_pretrained(tmp_path, variant="fp16")
    assert all(torch.equal(a, b) for a, b in zip(again.ella.state_dict().values(), pipe.ella.state_dict().values()))
