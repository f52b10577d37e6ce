"""Regional prompts (`ella.regions`, `ella.planning`): the pipelines with regions on tiny
components, the attention blend itself, the layouts' checks, the planners, and the CLI."""

import http.server
import json
import threading

import numpy as np
import pytest
import torch

from ella import ELLAStableDiffusionPipeline
from ella.regions import Layout, LayoutError, Region, RegionalAttnProcessor, blend_weights, coverage
from ella.testing import tiny_components

PROMPT = "a red circle at the top left and a blue square at the bottom right"
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)


def run(pipe, prompt=PROMPT, seeds=(1, 2), **kw):
    kw.setdefault("num_inference_steps", 2)
    return pipe(prompt, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np",
                num_images_per_prompt=len(seeds), **kw).images


def processors(model) -> dict:
    return dict(model.attn_processors)


def test_no_regions_draws_the_same_pixels_and_the_processors_are_restored(tiny_pipe):
    before, saved = run(tiny_pipe), processors(tiny_pipe.unet)
    regional = run(tiny_pipe, regions=[Region("a red circle", LEFT), Region("a blue square", RIGHT)])
    assert processors(tiny_pipe.unet) == saved  # the very same processor objects
    assert np.array_equal(run(tiny_pipe), before) and not np.allclose(regional, before)


def test_one_region_over_the_whole_image_with_the_global_prompt_is_no_region(tiny_pipe):
    plain = run(tiny_pipe, guidance_scale=4.0)
    whole = run(tiny_pipe, guidance_scale=4.0, regions=[Region(PROMPT, (0.0, 0.0, 1.0, 1.0))], base_ratio=0.2)
    np.testing.assert_allclose(whole, plain, atol=1e-5)
    background = run(tiny_pipe, guidance_scale=4.0, regions=Layout([Region(PROMPT, LEFT)], background_prompt=PROMPT))
    np.testing.assert_allclose(background, plain, atol=1e-5)  # a background prompt fills the rest


def test_a_regions_tokens_get_no_attention_from_pixels_outside_it():
    """On a cross-attention layer of a tiny UNet: the region's tokens changed, the output changes
    inside the region and not by one bit outside it; the global tokens reach everywhere."""
    unet = tiny_components()["unet"]
    attn = next(m for m in unet.modules() if getattr(m, "is_cross_attention", False))
    torch.manual_seed(0)
    h = w = 8
    layout = Layout([Region("r", (0.0, 0.0, 0.5, 0.5))])
    weights = blend_weights(coverage([layout], h, w), 0.3)  # (1, 2, 8, 8)
    processor = RegionalAttnProcessor(attn.processor, weights)
    x = torch.randn(1, h * w, attn.query_dim)
    glob, region = torch.randn(1, 4, 16), torch.randn(1, 4, 16)
    out = processor(attn, x, torch.cat([glob, region], 1))
    changed = processor(attn, x, torch.cat([glob, torch.randn(1, 4, 16)], 1))
    inside = weights[0, 1].flatten() > 0
    assert inside.sum() == 16
    assert torch.equal(out[0, ~inside], changed[0, ~inside]) and not torch.allclose(out[0, inside], changed[0, inside])
    other_global = processor(attn, x, torch.cat([torch.randn(1, 4, 16), region], 1))
    assert not torch.allclose(out[0, ~inside], other_global[0, ~inside])
    # the gathered path (each region over its own pixels) equals attending from every pixel
    context = torch.cat([glob, region], 1)
    assert torch.allclose(out, processor._dense(attn, x, context.unflatten(1, (2, 4)), None, None), atol=1e-5)
    attn.group_norm = torch.nn.GroupNorm(1, attn.query_dim)  # a layer that normalises over its pixels:
    try:  # every pixel, since a subset would change its statistics
        assert torch.equal(processor(attn, x, context), processor._dense(attn, x, context.unflatten(1, (2, 4)), None,
                                                                          None))
    finally:
        attn.group_norm = None
    # at the next level down (4x4), the region covers 4 pixels exactly
    small = processor._weights_for(16, 1)
    assert (small[0, 1] > 0).sum() == 4 and torch.allclose(small.sum(1), torch.ones(1, 4, 4))


def test_weights_sum_to_one_and_share_overlaps():
    layout = Layout([Region("a", (0.0, 0.0, 0.75, 1.0)), Region("b", (0.25, 0.0, 1.0, 1.0))], base_ratio=0.4)
    weights = blend_weights(coverage([layout], 4, 4), layout.base_ratio)[0]
    assert torch.allclose(weights.sum(0), torch.ones(4, 4))
    assert torch.allclose(weights[:, 0, 1], torch.tensor([0.4, 0.3, 0.3]))  # both regions share the overlap
    assert torch.allclose(weights[:, 0, 0], torch.tensor([0.4, 0.6, 0.0]))
    half = coverage([Layout([Region("a", (0.0, 0.0, 0.375, 1.0))])], 1, 4)[0, 0, 0]
    assert torch.allclose(half, torch.tensor([1.0, 0.5, 0.0, 0.0]))  # a box edge inside a pixel: its area share


def test_processors_are_restored_after_an_exception_and_an_interrupt(tiny_pipe):
    saved = processors(tiny_pipe.unet)
    regions = [Region("a red circle", LEFT)]

    def fail(pipe, i, t, tensors):
        assert any(isinstance(p, RegionalAttnProcessor) for p in pipe.unet.attn_processors.values())
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run(tiny_pipe, regions=regions, callback_on_step_end=fail)
    assert processors(tiny_pipe.unet) == saved

    def interrupt(pipe, i, t, tensors):
        pipe._interrupt = True
        return {}

    assert np.isfinite(run(tiny_pipe, regions=regions, num_inference_steps=3, callback_on_step_end=interrupt)).all()
    assert processors(tiny_pipe.unet) == saved


def test_regions_with_cfg_negatives_callbacks_precompute_and_batches(tiny_pipe):
    regions = [Region("a red circle", LEFT, negative_prompt="blurry"), Region("a blue square", RIGHT)]
    per_step = run(tiny_pipe, regions=regions, negative_prompt="ugly", guidance_scale=3.0)
    at_once = run(tiny_pipe, regions=regions, negative_prompt="ugly", guidance_scale=3.0, precompute_connector=True)
    np.testing.assert_allclose(at_once, per_step, atol=1e-5)

    def cfg_off(pipe, i, t, tensors):  # as diffusers' SDCFGCutoffCallback does
        pipe._guidance_scale = 0.0
        return {}

    assert np.isfinite(run(tiny_pipe, regions=regions, guidance_scale=3.0, num_inference_steps=3,
                           callback_on_step_end=cfg_off)).all()
    # two prompts, each with its own layout (of different sizes), equal each drawn alone
    layouts = [Layout(regions), Layout([Region("a green tree", (0.25, 0.25, 0.75, 0.75))])]
    both = tiny_pipe([PROMPT, "a tree"], regions=layouts, num_inference_steps=2, output_type="np",
                     generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    alone = run(tiny_pipe, "a tree", seeds=(2,), regions=layouts[1])
    np.testing.assert_allclose(both[1], alone[0], atol=1e-4)
    assert np.isfinite(run(tiny_pipe, regions=regions, conditioning="ella+clip")).all()


def test_regions_with_sdxl_controlnet_img2img_and_inpainting(tiny_pipe):
    from diffusers import ControlNetModel

    from ella import ELLAStableDiffusionInpaintPipeline, ELLAStableDiffusionXLPipeline
    from ella.testing import tiny_sdxl_components

    regions = [Region("a red circle", LEFT), Region("a blue square", RIGHT)]
    xl = ELLAStableDiffusionXLPipeline(**tiny_sdxl_components(), text_mode="flexible")
    xl.set_progress_bar_config(disable=True)
    assert not np.allclose(run(xl, regions=regions), run(xl))

    components = tiny_components()
    components["controlnet"] = ControlNetModel.from_unet(components["unet"], conditioning_embedding_out_channels=(8, 8))
    control_pipe = ELLAStableDiffusionPipeline(**components, text_mode="flexible")
    control_pipe.set_progress_bar_config(disable=True)
    saved = processors(control_pipe.controlnet)
    seen = []
    hook = control_pipe.controlnet.register_forward_pre_hook(
        lambda m, a, k: seen.append(any(isinstance(p, RegionalAttnProcessor) for p in m.attn_processors.values())),
        with_kwargs=True)
    image = run(control_pipe, regions=regions, image=np.ones((16, 16, 3), np.float32))
    hook.remove()
    assert np.isfinite(image).all() and all(seen) and processors(control_pipe.controlnet) == saved

    inpaint = ELLAStableDiffusionInpaintPipeline(**tiny_pipe.components, text_mode="flexible")
    inpaint.set_progress_bar_config(disable=True)
    start = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    mask = np.zeros((16, 16), np.float32)
    mask[:, 8:] = 1.0
    assert np.isfinite(run(inpaint, image=start, mask_image=mask, regions=regions)).all()


def test_bad_layouts_are_refused_in_one_line(tiny_pipe):
    cases = [
        ([Region("a", (0.0, 0.0, 1.2, 1.0))], "outside \\[0, 1\\]"),
        ([Region("a", (0.5, 0.0, 0.5, 1.0))], "is empty"),
        ([Region("  ", LEFT)], "prompt is empty"),
        ([Region("a", LEFT)] * 9, "at most 8"),
        ([Region("a")], "needs a box or a mask"),
        ([{"prompt": "a", "size": 3}], "Region's fields"),
        ("left half", "must be a Layout"),
    ]
    for regions, message in cases:
        with pytest.raises(LayoutError, match=message):
            tiny_pipe(PROMPT, regions=regions, num_inference_steps=1)
    with pytest.raises(ValueError, match="2 layouts for 1 prompts"):
        tiny_pipe(PROMPT, regions=[[Region("a", LEFT)], [Region("b", RIGHT)]], num_inference_steps=1)


def test_a_layout_round_trips_through_json(tmp_path):
    from ella.regions import load_layout

    layout = Layout([Region("a red circle", LEFT, negative_prompt="blur"), Region("a blue square", RIGHT)],
                    prompt=PROMPT, base_ratio=0.25, background_prompt="a gray wall", planner={"name": "test"})
    layout.save(str(tmp_path / "l.json"))
    again = load_layout(str(tmp_path / "l.json"))
    assert again.to_dict() == layout.to_dict() and again.regions[0].box == LEFT
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LayoutError, match="is not JSON"):
        load_layout(str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(LayoutError, match="is not a layout"):
        load_layout(str(tmp_path / "list.json"))


def test_llm_answers_are_parsed_repaired_or_refused():
    from ella.planning import parse_layout

    layout, repairs = parse_layout('Sure! ```json\n{"regions": [{"place": "top left", "prompt": "a cat"},'
                                   ' {"box": [50, 0, 100, 100], "prompt": "a dog"},]}\n```', "p")
    assert [r.box for r in layout.regions] == [(0.0, 0.0, 1 / 3, 1 / 3), (0.5, 0.0, 1.0, 1.0)]
    assert repairs == ["took the JSON out of a code fence", "removed a trailing comma", "read a box in percent"]
    layout, repairs = parse_layout('{"regions": [{"box": [-0.02, 0, 0.5, 1.01], "prompt": "a \\"cat\\" {x}"}]}', "p")
    assert layout.regions[0].box == (0.0, 0.0, 0.5, 1.0) and repairs == ["clamped a box to the image"]
    for answer, message in [("I cannot draw that.", "no JSON object"), ('{"regions": [{"box": [0, 0, 0, 0], '
                            '"prompt": "a"}]}', "is empty"), ('{"layout": []}', "not a layout"),
                            ('{"regions": [{"box": [0, 0, 300, 100], "prompt": "a"}]}', "outside")]:
        with pytest.raises(LayoutError, match=message):
            parse_layout(answer, "p")


def test_the_shapes_planner_is_exact_on_its_own_grammar():
    from ella.shapes.catalog import MAIN_PROMPT
    from ella.shapes.planner import layout_scene, plan

    layout = plan(MAIN_PROMPT)
    assert [r.prompt for r in layout.regions] == ["a large red circle at the top left", "a small blue square on the left"]
    assert layout.regions[1].box == (0.0, 1 / 3, 1 / 3, 2 / 3)
    cells = layout_scene(layout)
    assert cells[0] == ("red", "large", "circle") and cells[3] == ("blue", "small", "square") and cells.count(None) == 7
    with pytest.raises(LayoutError, match="cannot read"):
        plan("a maroon roundel on the far left")


class _ChatServer(http.server.BaseHTTPRequestHandler):
    answer = ""
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        reply = json.dumps({"choices": [{"message": {"content": type(self).answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_an_endpoint_planner_is_asked_greedily_and_its_plan_recorded():
    from ella.planning import plan_regions

    server = http.server.HTTPServer(("127.0.0.1", 0), _ChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _ChatServer.answer = '{"regions": [{"place": "center", "prompt": "a cat"}], "background_prompt": "grass"}'
        url = f"http://127.0.0.1:{server.server_port}/v1"
        layout = plan_regions("a cat in the center", f"openai:{url}#tiny-model")
        assert layout.regions[0].box == (1 / 3, 1 / 3, 2 / 3, 2 / 3) and layout.background_prompt == "grass"
        assert layout.planner["output"] == _ChatServer.answer and layout.planner["temperature"] == 0
        request = _ChatServer.seen[-1]
        assert request["model"] == "tiny-model" and request["messages"][-1]["content"] == "a cat in the center"
        _ChatServer.answer = "no idea"
        with pytest.raises(LayoutError, match="no JSON object.*planner openai:"):
            plan_regions("a cat", f"openai:{url}#tiny-model")
    finally:
        server.shutdown()
        server.server_close()


def test_cli_plans_draws_and_saves_the_layout_beside_the_image(tmp_path, capsys):
    from PIL import Image

    from ella.cli import main

    out = tmp_path / "r.png"
    prompt = "a large red circle at the top left, a small blue square below it"
    assert main(["generate", prompt, "--regions", "auto", "--steps", "2", "--out", str(out)]) == 0
    saved = json.loads((tmp_path / "r.layout.json").read_text())
    assert saved["planner"] == {"name": "shapes"} and len(saved["regions"]) == 2 and Image.open(out).size == (32, 32)
    capsys.readouterr()
    assert main(["plan", prompt, "--out", str(tmp_path / "plan.json")]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((tmp_path / "plan.json").read_text())
    again = tmp_path / "again.png"
    assert main(["generate", prompt, "--regions", str(tmp_path / "plan.json"), "--steps", "2", "--out", str(again)]) == 0
    assert Image.open(again).tobytes() == Image.open(out).tobytes()  # the file's layout draws the same image

    (tmp_path / "bad.json").write_text('{"regions": [{"prompt": "a", "box": [0.6, 0, 0.2, 1]}]}')
    (tmp_path / "text.json").write_text("regions: top left")
    for args, message in [
        (["--regions", str(tmp_path / "bad.json")], "region 1's box [0.6, 0.0, 0.2, 1.0] is empty"),
        (["--regions", str(tmp_path / "text.json")], "is not JSON"),
        (["--regions", "auto", "--planner", "nope"], "unknown planner 'nope'"),
        (["--regions", str(tmp_path / "missing.json")], "does not exist"),
        (["--planner", "shapes"], "go with --regions"),
    ]:
        capsys.readouterr()
        target = tmp_path / "n.png"
        assert main(["generate", prompt, "--steps", "2", "--out", str(target), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not target.exists() and not (tmp_path / "n.layout.json").exists()
    assert main(["plan", "a maroon roundel on the far left"]) == 2
    assert "cannot read" in capsys.readouterr().err
