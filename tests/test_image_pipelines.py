"""img2img, inpainting and IP-Adapter with ELLA, on tiny random components."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL import Image

from ella import (
    ELLAStableDiffusionImg2ImgPipeline,
    ELLAStableDiffusionInpaintPipeline,
    ELLAStableDiffusionPipeline,
    ELLAStableDiffusionXLImg2ImgPipeline,
)
from ella.testing import tiny_components, tiny_image_encoder, tiny_ip_adapter, tiny_sdxl_components, tiny_unet

PROMPT = "a big blue square to the left of a green tree"


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def picture(size: int = 16, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def half_mask(size: int = 16) -> Image.Image:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 2] = 255  # repaint the left half
    return Image.fromarray(mask)


def make(cls, pixel_space=False, **kw):
    pipe = cls(**tiny_components(pixel_space=pixel_space), text_mode="flexible", **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_img2img_at_strength_one_is_text_to_image(scheduler_cls):
    pipe = make(ELLAStableDiffusionImg2ImgPipeline)
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    kw = dict(num_inference_steps=3, output_type="np", num_images_per_prompt=2)
    from_image = pipe(PROMPT, image=picture(), strength=1.0, generator=gens(1, 2), **kw).images
    text_only = ELLAStableDiffusionPipeline.__call__(pipe, PROMPT, generator=gens(1, 2), **kw).images
    np.testing.assert_array_equal(from_image, text_only)


def test_img2img_keeps_the_image_at_low_strength_and_runs_the_cut_schedule():
    pipe = make(ELLAStableDiffusionImg2ImgPipeline, pixel_space=True)
    image = picture()
    calls = []
    hook = pipe.ella.register_forward_pre_hook(lambda m, args: calls.append(float(args[1])))
    out = pipe(PROMPT, image=image, strength=0.3, num_inference_steps=10, generator=gens(0), output_type="np").images
    hook.remove()
    pipe.scheduler.set_timesteps(10)
    assert calls == pipe.scheduler.timesteps[7:].tolist()  # the last 3 of 10 steps, each with its timestep
    source = np.asarray(image, dtype=np.float32) / 255
    strong = pipe(PROMPT, image=image, strength=1.0, num_inference_steps=10, generator=gens(0), output_type="np").images
    assert np.abs(out[0] - source).mean() < np.abs(strong[0] - source).mean()


def test_strength_and_sizes_are_checked():
    pipe = make(ELLAStableDiffusionInpaintPipeline)
    for strength in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="strength must be in"):
            pipe(PROMPT, image=picture(), mask_image=half_mask(), strength=strength, num_inference_steps=2)
    with pytest.raises(ValueError, match="keeps no step"):
        pipe(PROMPT, image=picture(), mask_image=half_mask(), strength=0.1, num_inference_steps=2)
    with pytest.raises(ValueError, match="same size"):
        pipe(PROMPT, image=picture(16), mask_image=half_mask(32), num_inference_steps=2)
    with pytest.raises(ValueError, match="multiples of 4"):
        pipe(PROMPT, image=picture(18), mask_image=half_mask(18), num_inference_steps=2)
    out = pipe(PROMPT, image=picture(18), mask_image=half_mask(18), height=16, width=16, num_inference_steps=2,
               output_type="np").images  # resized when asked
    assert out.shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="need an init_image"):
        ELLAStableDiffusionPipeline.__call__(pipe, PROMPT, strength=0.5, num_inference_steps=2)


def test_inpainting_keeps_everything_outside_the_mask():
    pipe = make(ELLAStableDiffusionInpaintPipeline, pixel_space=True)  # no VAE: the kept half is exact
    image = picture()
    out = pipe([PROMPT, "a red circle"], image=image, mask_image=half_mask(), num_inference_steps=4,
               generator=gens(0, 1), output_type="np").images
    source = np.asarray(image, dtype=np.float32) / 255
    for row in out:
        np.testing.assert_allclose(row[:, 8:], source[:, 8:], atol=1 / 255)
        assert np.abs(row[:, :8] - source[:, :8]).mean() > 0.05  # the masked half was repainted


def test_inpainting_with_a_vae_keeps_the_latents_outside_the_mask():
    """The VAE decodes with global statistics (GroupNorm, attention), so pixels outside the mask
    come back within its round-trip error; the latents there are the image's own, exactly."""
    pipe = make(ELLAStableDiffusionInpaintPipeline)
    image = picture(32)
    latents = pipe(PROMPT, image=image, mask_image=half_mask(32), num_inference_steps=3, generator=gens(0),
                   output_type="latent").images[0]
    source = pipe.encode_init_image(pipe.image_processor.preprocess(image))[0]
    np.testing.assert_allclose(latents[:, :, 8:], source[:, :, 8:], atol=1e-6)
    assert (latents[:, :, :8] - source[:, :, :8]).abs().mean() > 0.05


def test_nine_channel_inpainting_unet_reads_mask_and_masked_image():
    components = tiny_components()
    components["unet"] = tiny_unet(in_channels=9, out_channels=4)
    pipe = ELLAStableDiffusionInpaintPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    out = pipe(PROMPT, image=picture(), mask_image=half_mask(), num_inference_steps=2, generator=gens(0),
               output_type="np").images
    hook.remove()
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()
    assert seen[0] == (2, 9, 8, 8)  # CFG rows x (4 latent + 1 mask + 4 masked-image channels)
    components["unet"] = tiny_unet(in_channels=5)
    with pytest.raises(ValueError, match="4 input channels .* or 9"):
        ELLAStableDiffusionInpaintPipeline(**components)(PROMPT, image=picture(), mask_image=half_mask(),
                                                          num_inference_steps=2)


def test_sdxl_img2img_runs():
    pipe = ELLAStableDiffusionXLImg2ImgPipeline(**tiny_sdxl_components())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, image=picture(), strength=0.5, num_inference_steps=4, output_type="np").images
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()


def with_ip_adapter(text_mode="flexible"):
    pipe = make(ELLAStableDiffusionPipeline) if text_mode == "flexible" else ELLAStableDiffusionPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    encoder, processor = tiny_image_encoder()
    pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
    pipe.load_ip_adapter(tiny_ip_adapter(pipe.unet), subfolder="", weight_name="", image_encoder_folder=None)
    return pipe


@pytest.mark.parametrize("text_mode", ["flexible", "fixed"])
def test_ip_adapter_scale_zero_is_no_adapter_and_a_scale_changes_the_image(text_mode):
    pipe = with_ip_adapter(text_mode)
    kw = dict(num_inference_steps=2, output_type="np", ip_adapter_image=picture(32, seed=5))
    pipe.set_ip_adapter_scale(0.0)
    off = pipe([PROMPT, "a cat"], generator=gens(0, 1), **kw).images
    pipe.set_ip_adapter_scale(1.0)
    on = pipe([PROMPT, "a cat"], generator=gens(0, 1), **kw).images
    pipe.unload_ip_adapter()
    plain = pipe([PROMPT, "a cat"], generator=gens(0, 1), num_inference_steps=2, output_type="np").images
    np.testing.assert_allclose(off, plain, atol=1e-6)
    assert np.abs(on - plain).max() > 1e-3


def test_ip_adapter_image_embeds_equal_the_image_and_missing_input_is_refused():
    pipe = with_ip_adapter()
    kw = dict(num_inference_steps=2, output_type="np")
    image = picture(32, seed=5)
    from_image = pipe(PROMPT, ip_adapter_image=image, generator=gens(0), **kw).images
    pos, neg = pipe.encode_ip_image(image, hidden_states=False)
    from_embeds = pipe(PROMPT, ip_adapter_image_embeds=[torch.cat([neg, pos])], generator=gens(0), **kw).images
    np.testing.assert_allclose(from_image, from_embeds, atol=1e-6)
    with pytest.raises(ValueError, match="IP-Adapter is loaded"):
        pipe(PROMPT, **kw)
    with pytest.raises(ValueError, match="2 IP-Adapter images for 1"):
        pipe(PROMPT, ip_adapter_image=[image, image], **kw)


def test_cli_inpaints_with_the_shipped_model_and_keeps_the_rest(tmp_path):
    import random

    from ella.cli import main
    from ella.shapes.world import render, sample_scene

    truth = render(sample_scene(random.Random(3)))
    truth.save(tmp_path / "truth.png")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, :11] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    assert main(["generate", "a large red circle on the left", "--init-image", str(tmp_path / "truth.png"),
                 "--mask", str(tmp_path / "mask.png"), "--steps", "5", "--out", str(out), "-q"]) == 0
    drawn = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    np.testing.assert_array_equal(drawn[:, 11:], np.asarray(truth, dtype=np.int16)[:, 11:])


@pytest.mark.parametrize("flags, message", [
    (["--init-image", "{bad}"], "not a readable image"),
    (["--init-image", "{missing}"], "not found"),
    (["--init-image", "{good}", "--mask", "{small}"], "must be the same size"),
    (["--mask", "{good}"], "go with --init-image"),
])
def test_cli_refuses_bad_init_images_in_one_line(tmp_path, capsys, flags, message):
    from ella.cli import main

    paths = dict(bad=tmp_path / "bad.png", missing=tmp_path / "missing.png", good=tmp_path / "good.png",
                 small=tmp_path / "small.png")
    paths["bad"].write_bytes(b"not an image")
    picture(16).save(paths["good"])
    picture(8).save(paths["small"])
    args = [f.format(**paths) for f in flags]
    assert main(["generate", "a red circle", *args, "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("value", ["0", "1.5", "-1", "x"])
def test_cli_strength_outside_zero_one_is_refused(value, capsys):
    from ella.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "a red circle", "--init-image", "x.png", "--strength", value])
    assert exit_info.value.code == 2 and "--strength" in capsys.readouterr().err


def test_image_sizes_of_pil_numpy_and_tensors():
    from ella.pipelines.init_image import check_same_size, image_size

    assert image_size(picture(16)) == (16, 16)
    assert image_size(np.zeros((12, 20, 3))) == (12, 20)
    assert image_size(torch.zeros(1, 3, 12, 20)) == (12, 20)
    assert image_size([Image.new("RGB", (20, 12))]) == (12, 20)
    check_same_size(np.zeros((12, 20, 3)), Image.new("L", (20, 12)))
    with pytest.raises(ValueError, match="mask_image is 12x20 pixels but the image is 20x12"):
        check_same_size(np.zeros((12, 20, 3)), Image.new("L", (12, 20)))
