import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ella import ELLA, CheckpointError

# The 93 keys of `ella-sd1.5-tsc-t5xl.safetensors`, as the released file holds them (QQGYLab/ELLA on the hub).
OFFICIAL_TOP = {
    "time_embedding.linear_1.weight": (768, 320),
    "time_embedding.linear_1.bias": (768,),
    "time_embedding.linear_2.weight": (768, 768),
    "time_embedding.linear_2.bias": (768,),
    "connector.latents": (64, 768),
    "connector.time_aware_linear.weight": (768, 768),
    "connector.time_aware_linear.bias": (768,),
    "connector.proj_in.weight": (768, 2048),
    "connector.proj_in.bias": (768,),
}
OFFICIAL_BLOCK = {
    "attn.in_proj_weight": (2304, 768),
    "attn.in_proj_bias": (2304,),
    "attn.out_proj.weight": (768, 768),
    "attn.out_proj.bias": (768,),
    "mlp.c_fc.weight": (3072, 768),
    "mlp.c_fc.bias": (3072,),
    "mlp.c_proj.weight": (768, 3072),
    "mlp.c_proj.bias": (768,),
    "ln_1.linear.weight": (1536, 768),
    "ln_1.linear.bias": (1536,),
    "ln_2.linear.weight": (1536, 768),
    "ln_2.linear.bias": (1536,),
    "ln_ff.linear.weight": (1536, 768),
    "ln_ff.linear.bias": (1536,),
}


def official_shapes() -> dict[str, tuple]:
    shapes = dict(OFFICIAL_TOP)
    for n in range(6):
        shapes.update({f"connector.perceiver_blocks.{n}.{k}": s for k, s in OFFICIAL_BLOCK.items()})
    return shapes


def random_state_dict(shapes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (0.02 * torch.randn(s, generator=g)).to(dtype) for k, s in shapes.items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_official_layout_loads_from_single_file(tmp_path, dtype):
    shapes = official_shapes()
    assert len(shapes) == 93
    sd = random_state_dict(shapes, dtype)
    path = tmp_path / "ella-sd1.5-tsc-t5xl.safetensors"
    save_file(sd, str(path))
    model = ELLA.from_single_file(str(path))
    assert model.config.input_dim == 2048 and model.config.layers == 6
    assert sum(p.numel() for p in model.parameters()) == 66_820_608
    own = model.state_dict()
    assert set(own) == set(shapes)
    for k, v in sd.items():  # every key maps to a parameter, with its values
        assert torch.equal(own[k], v.float()), k


def reference_forward(sd, x, t, heads):
    """The forward math of the released connector (the ELLA repository's `model.py` at 3c228f1), written
    independently of ella.models."""
    half = sd["time_embedding.linear_1.weight"].shape[1] // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1) * freqs
    feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).expand(x.shape[0], -1)
    temb = F.linear(F.silu(F.linear(feats, sd["time_embedding.linear_1.weight"], sd["time_embedding.linear_1.bias"])),
                    sd["time_embedding.linear_2.weight"], sd["time_embedding.linear_2.bias"])[:, None]
    lat = sd["connector.latents"][None] + F.linear(F.silu(temb), sd["connector.time_aware_linear.weight"],
                                                   sd["connector.time_aware_linear.bias"])
    h = F.linear(x, sd["connector.proj_in.weight"], sd["connector.proj_in.bias"])
    w = lat.shape[-1]

    def ada(z, p):
        shift, scale = F.linear(F.silu(temb), sd[p + ".linear.weight"], sd[p + ".linear.bias"]).chunk(2, -1)
        return F.layer_norm(z, (w,), eps=1e-6) * (1 + scale) + shift

    n_blocks = len({k.split(".")[2] for k in sd if k.startswith("connector.perceiver_blocks.")})
    for i in range(n_blocks):
        p = f"connector.perceiver_blocks.{i}."
        n = ada(lat, p + "ln_1")
        kv = torch.cat([n, ada(h, p + "ln_2")], 1)
        wq, wk, wv = sd[p + "attn.in_proj_weight"].chunk(3)
        bq, bk, bv = sd[p + "attn.in_proj_bias"].chunk(3)
        q, k, v = F.linear(n, wq, bq), F.linear(kv, wk, bk), F.linear(kv, wv, bv)
        split = lambda z: z.view(z.shape[0], z.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(w // heads), -1) @ split(v)
        a = a.transpose(1, 2).reshape(lat.shape)
        lat = lat + F.linear(a, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])
        f = F.relu(F.linear(ada(lat, p + "ln_ff"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])) ** 2
        lat = lat + F.linear(f, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return lat


@pytest.mark.parametrize("timestep", [999, torch.tensor([10, 700])])
def test_forward_matches_reference_math(tmp_path, timestep):
    model = ELLA(time_channel=32, time_embed_dim=48, width=48, layers=2, heads=4, num_latents=8, input_dim=24)
    sd = random_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, torch.float32, seed=1)
    save_file(sd, str(tmp_path / "c.safetensors"))
    loaded = ELLA.from_single_file(str(tmp_path / "c.safetensors"), heads=4).eval()
    x = torch.randn(2, 7, 24)
    with torch.no_grad():
        ours = loaded(x, timestep)
    torch.testing.assert_close(ours, reference_forward(sd, x, timestep, heads=4), atol=1e-5, rtol=1e-5)


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():  # leave zero-init: make every path active
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("connector_type", ["tsc", "adaln-zero", "resampler", "mlp"])
def test_masked_batch_equals_each_prompt_alone(connector_type):
    model = _perturbed(ELLA.from_preset("tiny", connector_type=connector_type))
    lengths = [3, 9, 5, 1]
    prompts = [torch.randn(1, n, 32) for n in lengths]
    batch = torch.zeros(len(lengths), max(lengths), 32) + 7.0  # junk in the padding on purpose
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, : p.shape[1]] = p
        mask[i, : p.shape[1]] = 1
    t = torch.tensor([5, 250, 500, 999])
    with torch.no_grad():
        batched = model(batch, t, mask)
        for i, p in enumerate(prompts):
            alone = model(p, t[i])
            got = batched[i : i + 1, : alone.shape[1]]
            assert (got - alone).abs().max() <= 1e-5


def test_output_depends_on_timestep():
    model = _perturbed(ELLA.from_preset("tiny"))
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x, 10), model(x, 900))
    no_time = _perturbed(ELLA.from_preset("tiny", connector_type="resampler"))
    with torch.no_grad():
        assert torch.equal(no_time(x, 10), no_time(x, 900))


@pytest.mark.parametrize("connector_type", ["tsc", "resampler"])
def test_forward_timesteps_equals_one_call_per_timestep(connector_type):
    model = _perturbed(ELLA.from_preset("tiny", connector_type=connector_type))
    x = torch.randn(2, 6, 32)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    schedule = torch.tensor([999.0, 500.0, 500.0, 3.0])  # a repeated timestep, as Heun visits them
    with torch.no_grad():
        together = model.forward_timesteps(x, schedule, mask)
        assert together.shape == (4, 2, 4, 16)
        for step, t in enumerate(schedule):
            assert (together[step] - model(x, t, mask)).abs().max() <= 1e-5


@pytest.mark.parametrize("connector_type", ["tsc", "adaln-zero"])
def test_adaln_projections_start_at_zero(connector_type):
    model = ELLA.from_preset("sd15-t5xl" if connector_type == "tsc" else "tiny", connector_type=connector_type)
    adaln = [(k, v) for k, v in model.state_dict().items() if ".ln_" in k and ".linear." in k]
    assert adaln and all(torch.count_nonzero(v) == 0 for _, v in adaln)


def test_tsc_starts_as_a_resampler_with_distinct_tokens():
    # Every timestep path (AdaLN and time_aware_linear) starts at zero, and the latents are distinct
    # enough that the output tokens differ (the release's init gave them a relative spread of 0.3).
    model = ELLA.from_preset("shapes-minilm").eval()
    x = torch.randn(2, 20, 384)
    with torch.no_grad():
        early, late = model(x, 10), model(x, 900)
    assert torch.equal(early, late)
    spread = (early - early.mean(1, keepdim=True)).norm(dim=-1).mean() / early.norm(dim=-1).mean()
    assert spread > 0.8


def test_save_pretrained_round_trip_is_exact(tmp_path):
    model = _perturbed(ELLA.from_preset("tiny", output_dim=24))
    model.save_pretrained(tmp_path / "c")
    again = ELLA.from_pretrained(tmp_path / "c")
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(again.config) == public(model.config)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 4, 32)
    with torch.no_grad():
        assert torch.equal(model(x, 3), again.eval()(x, 3))


@pytest.mark.parametrize("connector_type", ["tsc", "adaln-zero", "resampler", "mlp"])
def test_single_file_config_inference_for_every_variant(tmp_path, connector_type):
    model = ELLA.from_preset("tiny", connector_type=connector_type, output_dim=24)
    save_file(model.state_dict(), str(tmp_path / "c.safetensors"))
    again = ELLA.from_single_file(str(tmp_path / "c.safetensors"), heads=2)
    assert again.config.connector_type == connector_type
    assert again.config.output_dim == 24


def test_wrong_checkpoints_are_refused_by_name(tmp_path):
    sd = ELLA.from_preset("tiny").state_dict()
    bad = dict(sd)
    bad.pop("connector.perceiver_blocks.1.mlp.c_fc.bias")
    bad["connector.extra.weight"] = torch.zeros(3)
    bad["connector.perceiver_blocks.0.mlp.c_proj.bias"] = torch.zeros(5)
    model = ELLA.from_preset("tiny")
    with pytest.raises(CheckpointError) as err:
        model.load_strict(bad)
    msg = str(err.value)
    assert "connector.perceiver_blocks.1.mlp.c_fc.bias" in msg
    assert "connector.extra.weight" in msg
    assert "connector.perceiver_blocks.0.mlp.c_proj.bias" in msg
    save_file({"foo": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="connector.latents"):
        ELLA.from_single_file(str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not found"):
        ELLA.from_single_file(str(tmp_path / "absent.safetensors"))
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        ELLA.from_single_file(str(tmp_path / "corrupt.safetensors"))


def test_unknown_preset_and_type():
    with pytest.raises(ValueError, match="unknown ELLA preset"):
        ELLA.from_preset("nope")
    with pytest.raises(ValueError, match="connector_type"):
        ELLA(connector_type="nope")


def test_misshapen_inputs_are_named():
    model = ELLA.from_preset("tiny")
    text, width = torch.randn(2, 5, model.config.input_dim), model.config.input_dim
    with pytest.raises(ValueError, match=rf"must be \(batch, tokens, {width}\), got \(2, 5, 7\)"):
        model(torch.randn(2, 5, 7), 10)
    with pytest.raises(ValueError, match="got 3 timesteps for a batch of 2"):
        model(text, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"text_attention_mask must be \(batch, tokens\) = \(2, 5\), got \(2, 4\)"):
        model(text, 10, torch.ones(2, 4))  # was an assertion deep inside the attention


def test_a_connector_with_an_sdxl_pool_round_trips_through_a_file_without_config(tmp_path):
    from safetensors.torch import save_file

    model = ELLA.from_preset("tiny", output_dim=32, pooled_dim=8)
    torch.nn.init.normal_(model.pool.proj.weight)  # not the zero init, so the check can fail
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    loaded = ELLA.from_single_file(str(tmp_path / "bare.safetensors"), heads=2)  # shapes only, as the official file
    assert loaded.config.pooled_dim == 8 and loaded.config.output_dim == 32
    tokens = torch.randn(2, 4, 32)
    assert torch.equal(loaded.pooled(tokens), model.pooled(tokens))
    with pytest.raises(ValueError, match="no pool"):
        ELLA.from_preset("tiny").pooled(torch.randn(1, 4, 16))
