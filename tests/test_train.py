import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ella.cli import main
from ella.train import load_config, train
from ella.train.checkpoint import latest_checkpoint, list_checkpoints, load_training_state
from ella.train.components import load_frozen_parts

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")


def tiny_config(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=4, checkpoint_every=2, log_every=1, validate_every=0,
                batch_size=2, warmup_steps=2)
    return load_config(CONFIG, {**base, **overrides})


def test_train_entry_point_writes_checkpoint_and_export(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", CONFIG, "--max-steps", "3", "--output-dir", str(out), "--validate-every", "3",
                 "--batch-size", "2", "--checkpoint-every", "2"])
    assert code == 0
    assert "trained 3 steps" in capsys.readouterr().out
    assert latest_checkpoint(str(out)).endswith("step-00000003")
    assert os.path.isfile(out / "checkpoints" / "step-00000002" / "config.yaml")
    assert (out / "validation" / "step-00000003.png").is_file() and (out / "loss.png").is_file()
    state = load_training_state(latest_checkpoint(str(out)))
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in state["losses"].tolist())

    from ella import ELLA, ELLAStableDiffusionPipeline
    from ella.testing import tiny_components

    components = tiny_components()
    components["ella"] = ELLA.from_pretrained(out / "export")
    pipe = ELLAStableDiffusionPipeline(**components, text_max_length=16, text_mode="flexible")
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a red square", num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 3)


def test_frozen_models_stay_bit_identical_and_only_the_connector_learns(tmp_path):
    config = tiny_config(tmp_path, max_steps=3)
    parts = load_frozen_parts(config, torch.device("cpu"), torch.float32)
    before = {name: {k: v.clone() for k, v in m.state_dict().items()}
              for name, m in (("unet", parts.unet), ("vae", parts.vae), ("llm", parts.text_encoder))}
    result = train(config, parts)
    assert result.step == 3
    for name, m in (("unet", parts.unet), ("vae", parts.vae), ("llm", parts.text_encoder)):
        for k, v in m.state_dict().items():  # (the trainer may have moved them to a GPU)
            assert torch.equal(v.cpu(), before[name][k]), f"{name}.{k} changed"
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())


def test_the_fast_path_is_the_default_and_trains_as_the_plain_path(tmp_path, monkeypatch):
    """mixed_precision "auto", the default, is bf16 autocast on a CPU that computes bf16 natively
    (benchmarks/train_step_profile.py: the step's one lever that pays there) and fp32 on one that
    does not; a bf16 run's losses are the fp32 run's to bf16's precision."""
    from ella import devices
    from ella.train import loop
    from ella.train.config import TrainConfig

    assert TrainConfig().mixed_precision == "auto"
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    assert [devices.resolve_mixed_precision(p, "cpu") for p in ("auto", "no", "bf16")] == ["no", "no", "bf16"]
    assert devices.resolve_mixed_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)
    assert devices.resolve_mixed_precision("auto", "cpu") == "bf16"
    run = loop.build(tiny_config(tmp_path / "auto"), None)
    assert run.cpu_bf16 or run.accelerator.mixed_precision == "bf16"
    wrapped = [type(p).__name__ == "Float32AttnProcessor" for p in run.parts.unet.attn_processors.values()]
    assert wrapped and all(wrapped) == run.cpu_bf16  # on a CPU the attention stays in fp32
    plain = train(tiny_config(tmp_path / "plain", max_steps=3, mixed_precision="no"))
    fast = train(tiny_config(tmp_path / "fast", max_steps=3, mixed_precision="bf16"))
    assert plain.losses != fast.losses  # autocast ran
    for (_, a), (_, b) in zip(plain.losses, fast.losses):
        assert abs(a - b) <= 0.02 * a


def test_attention_in_float32_equals_diffusers_attention_and_keeps_bf16_out_of_it():
    """Float32AttnProcessor (the CPU bf16 step's attention) computes what diffusers' processors do,
    with a padding mask and on layers outside its plain case (a group-normed 4-D attention); under a
    bf16 autocast the attention itself receives fp32."""
    from diffusers.models.attention_processor import Attention

    from ella.testing import tiny_unet
    from ella.train import attention

    unet = tiny_unet(cross_attention_dim=16, sample_size=8)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 7, 16)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        expected = unet(x, t, context, encoder_attention_mask=mask).sample
        attention.attention_in_float32(unet)
        attention.attention_in_float32(unet)  # once, however often it is called
        assert all(type(p.processor).__name__ == "AttnProcessor2_0" for p in unet.attn_processors.values())
        torch.testing.assert_close(unet(x, t, context, encoder_attention_mask=mask).sample, expected, atol=1e-5, rtol=1e-5)
        layer = Attention(8, heads=2, dim_head=4, norm_num_groups=4, residual_connection=True)
        h = torch.randn(2, 8, 3, 3)
        reference = layer(h)
        layer.set_processor(attention.Float32AttnProcessor(layer.processor))
        torch.testing.assert_close(layer(h), reference)
        calls = []  # another processor (IP-Adapter's, a user's) is called itself, with fp32 inputs

        class Probe:
            def __call__(self, attn, hidden_states, *args, **kwargs):
                calls.append((hidden_states.dtype, torch.is_autocast_enabled("cpu")))
                return plain(attn, hidden_states, *args, **kwargs)

        layer = Attention(8, heads=2, dim_head=4)
        plain = layer.processor
        layer.set_processor(attention.Float32AttnProcessor(Probe()))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(torch.randn(2, 5, 8))
        assert calls == [(torch.float32, False)]
        seen = []
        real = attention.F.scaled_dot_product_attention
        with pytest.MonkeyPatch.context() as patch, torch.autocast("cpu", dtype=torch.bfloat16):
            patch.setattr(attention.F, "scaled_dot_product_attention", lambda q, *a, **k: seen.append(q.dtype) or real(q, *a, **k))
            unet(x, t, context, encoder_attention_mask=mask)
        assert seen and set(seen) == {torch.float32}


def test_resume_equals_a_straight_run(tmp_path):
    straight = train(tiny_config(tmp_path / "a", max_steps=6, checkpoint_every=3))
    train(tiny_config(tmp_path / "b", max_steps=3, checkpoint_every=3))  # "killed" after step 3
    ckpt_root = tmp_path / "b" / "run" / "checkpoints"
    (ckpt_root / ".tmp-step-00000009").mkdir()  # interrupted mid-write: never the latest
    (ckpt_root / "step-00000008").mkdir()  # no state file: incomplete
    assert latest_checkpoint(str(tmp_path / "b" / "run")).endswith("step-00000003")
    at3 = load_training_state(latest_checkpoint(str(tmp_path / "b" / "run")))["cpu_seconds"]
    resumed = train(tiny_config(tmp_path / "b", max_steps=6, checkpoint_every=3, resume=True))
    assert resumed.step == 6
    a = load_training_state(latest_checkpoint(str(tmp_path / "a" / "run")))
    b = load_training_state(latest_checkpoint(str(tmp_path / "b" / "run")))
    assert 0 < at3 < b["cpu_seconds"] == resumed.cpu_seconds  # CPU time carries over the resume
    assert (a["data_epoch"], a["data_batch"]) == (b["data_epoch"], b["data_batch"])
    for k in a["ella"]:
        torch.testing.assert_close(a["ella"][k], b["ella"][k], atol=1e-6, rtol=0)
        torch.testing.assert_close(a["ema"][k], b["ema"][k], atol=1e-6, rtol=0)
    assert [round(x, 6) for _, x in straight.losses] == [round(x, 6) for _, x in resumed.losses]


def test_resume_with_more_steps_follows_the_longer_schedule(tmp_path):
    """A second stage (resume with a larger max_steps) restores the step, not the old schedule:
    the lr continues on the cosine of the new max_steps."""
    from ella.train.utils import lr_lambda

    config = tiny_config(tmp_path, max_steps=4, checkpoint_every=4, lr_final_fraction=0.1)
    train(config)
    assert load_training_state(latest_checkpoint(config.output_dir))["lr_scheduler"]["_last_lr"][0] == pytest.approx(config.lr * 0.1)
    stage2 = tiny_config(tmp_path, max_steps=8, checkpoint_every=2, lr_final_fraction=0.1, resume=True, timestep_power=2.0)
    assert train(stage2).step == 8
    step6 = [c for c in list_checkpoints(config.output_dir) if c.endswith("step-00000006")][0]
    expected = config.lr * lr_lambda(2, 8, 0.1)(6)
    assert expected > 2 * config.lr * 0.1  # the old 4-step schedule would have stayed at 0.1 * lr
    assert load_training_state(step6)["lr_scheduler"]["_last_lr"][0] == pytest.approx(expected)


def test_init_connector_starts_from_saved_weights(tmp_path):
    from ella import ELLA
    from ella.train.components import build_connector, load_init_connector

    config = tiny_config(tmp_path, max_steps=2)
    parts = load_frozen_parts(config, torch.device("cpu"), torch.float32)
    export = train(config, parts).export_dir
    saved = ELLA.from_pretrained(export).state_dict()
    started = build_connector(config, parts)
    load_init_connector(started, dataclasses.replace(config, init_connector=export))
    start = started.state_dict()
    fresh = build_connector(config, parts).state_dict()
    assert all(torch.equal(start[k], saved[k]) for k in saved)
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved)
    mlp = dataclasses.replace(config, init_connector=export, connector_type="mlp")
    with pytest.raises(ValueError, match="does not fit connector"):
        load_init_connector(build_connector(mlp, parts), mlp)
    # through the trainer: a 1-step run from the export ends near it (step 1's update is tiny at
    # warmup lr), far nearer than the fresh start is
    tuned = train(dataclasses.replace(config, init_connector=export, output_dir=str(tmp_path / "tuned"), max_steps=1))
    after = ELLA.from_pretrained(tuned.export_dir).state_dict()
    dist = sum((after[k] - saved[k]).abs().sum() for k in saved)
    assert dist < sum((fresh[k] - saved[k]).abs().sum() for k in saved) / 10


def test_training_from_the_cache_matches_raw_data(tmp_path):
    from ella.train.cache import build_cache

    raw = train(tiny_config(tmp_path / "raw", max_steps=3, caption_dropout=0.5))
    config = tiny_config(tmp_path / "cached", max_steps=3, caption_dropout=0.5, cache_dir=str(tmp_path / "cache"))
    build_cache(config, load_frozen_parts(config, torch.device("cpu"), torch.float32, need_unet=False), shard_size=3)
    cached = train(config)
    for (_, a), (_, b) in zip(raw.losses, cached.losses):
        assert abs(a - b) <= 1e-5
    from ella.train.cache import CachedFeatureDataset

    in_memory, mapped = CachedFeatureDataset(config.cache_dir), CachedFeatureDataset(config.cache_dir, preload_bytes=0)
    for i in range(len(mapped)):  # preloaded shards and row-wise memory-map reads agree
        assert all(torch.equal(in_memory[i][k], mapped[i][k]) for k in ("latents", "text_features", "text_mask"))
    # features read otherwise (the LLM reading each prompt twice) are not these: the cache is refused
    with pytest.raises(ValueError, match="was built for"):
        train(tiny_config(tmp_path / "echo", max_steps=1, cache_dir=config.cache_dir, text_echo=True))


def test_bad_samples_are_skipped_and_counted(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    colors = ["red", "green", "blue", "yellow", "white", "black"]
    for i, c in enumerate(colors):
        Image.new("RGB", (20, 24), c).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a {c} square")
    (data / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "broken.txt").write_text("a broken image")
    Image.new("RGB", (16, 16), "gray").save(data / "nocaption.png")
    # 8 samples, 2 steps of 4: one epoch, so each of the 2 bad samples is met exactly once
    with caplog.at_level("INFO", logger="ella.train.loop"):
        result = train(tiny_config(tmp_path, train_data=str(data), max_steps=2, batch_size=4))
    assert result.step == 2 and result.skipped == 2
    assert "skipped 2 unusable samples" in caplog.text


def test_two_processes_see_disjoint_data_and_end_identical(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "ella.cli", "train", CONFIG, "--max-steps", "3", "--batch-size", "2", "--output-dir", str(out),
           "--validate-every", "0", "--log-data-order", "true"]
    # Two CPU processes (gloo) on any machine: hidden GPUs, or a one-GPU machine would give both cuda:0.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    logs = [(out / "logs" / f"samples-rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    seen = [{k for line in lg[:-1] for k in line.split()} for lg in logs]
    # 8 samples, 2 per batch, 2 processes: each epoch's permutation is split, never shared.
    first_epoch = [set(lg[0].split()) | set(lg[1].split()) for lg in logs]
    assert not first_epoch[0] & first_epoch[1]
    assert seen[0] and seen[1]
    digests = [lg[-1] for lg in logs]
    assert digests[0].startswith("final connector sha256") and digests[0] == digests[1]


def test_config_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown config field"):
        load_config(CONFIG, {"nope": "1"})
    with pytest.raises(ValueError, match="cannot read"):
        load_config(CONFIG, {"max_steps": "many"})
    with pytest.raises(ValueError, match="cannot read"):
        load_config(CONFIG, {"lr": "fast"})
    assert load_config(CONFIG, {"lr": "5e-4"}).lr == 5e-4  # YAML alone would read a string
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "absent.yaml"))
    assert main(["train", str(tmp_path / "absent.yaml")]) == 2
    import ella.train.components as components

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the frozen models before checking cache_dir")

    monkeypatch.setattr(components, "load_frozen_parts", no_loading)
    assert main(["cache", CONFIG]) == 2  # no cache_dir: refused before any model is loaded
    with pytest.raises(ValueError, match="timestep_power"):
        load_config(CONFIG, {"timestep_power": "0"}).validate()
    from ella.shapes.base import BaseConfig

    for name, value, message in (("lr", "-1", "lr must be positive"), ("ema_decay", "1", r"ema_decay must be in \[0, 1\)"),
                                 ("warmup_steps", "-5", "warmup_steps must be >= 0")):
        with pytest.raises(ValueError, match=message):  # both training configs share these checks
            load_config(CONFIG, {name: value}).validate()
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(BaseConfig(), **{name: float(value)}).validate()


def test_connector_overfits_eight_pairs(tmp_path):
    """A connector on a frozen, briefly pretrained UNet memorises 8 image-caption pairs: the loss
    falls by at least half (a random frozen UNet cannot denoise, whatever its conditioning)."""
    from ella.shapes.base import BaseConfig, train_base
    from ella.train.cache import build_cache

    base = BaseConfig(n_scenes=8, captions_per_scene=4, resolution=16, unet_channels=[16, 32], cross_attention_dim=32,
                      text_layers=1, max_steps=200, batch_size=8, lr=2e-3, warmup_steps=20, ema_decay=0.0,
                      caption_dropout=0.0, output_dir=str(tmp_path / "base"), device="cpu", log_every=100,
                      snapshot_every=150)
    train_base(base)
    # a mid-run export loads like the final one and holds the weights of its step, not the last ones
    # (training went on after it: an export that had converted the live EMA to fp16 would have failed)
    from ella.pipelines.loading import load_unet

    snapshot, final = load_unet(str(tmp_path / "base" / "step-150")), load_unet(str(tmp_path / "base"))
    assert (tmp_path / "base" / "step-150" / "base_text_encoder" / "config.json").is_file()
    assert not torch.equal(snapshot.conv_out.weight, final.conv_out.weight)
    config = load_config(CONFIG, dict(
        model=str(tmp_path / "base"), llm="minilm", connector="tiny", train_data="shapes:8", resolution=16,
        text_max_length=96, caption_dropout=0.0, cache_dir=str(tmp_path / "cache"), max_steps=80, batch_size=8,
        lr=3e-3, warmup_steps=10, ema_decay=0.0, output_dir=str(tmp_path / "ella"), validate_every=0,
        checkpoint_every=1000))
    build_cache(config, load_frozen_parts(config, torch.device("cpu"), torch.float32, need_unet=False))
    losses = [x for _, x in train(config).losses]
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last <= 0.5 * first, (first, last)


def test_webdataset_tar_shards_stream(tmp_path):
    import io

    from conftest import write_tar

    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        members = {}
        for i in range(5):
            key = f"s{s}-{i}"
            buf = io.BytesIO()
            Image.new("RGB", (18, 18), ["red", "blue", "green", "white", "black"][i]).save(buf, format="PNG")
            members |= {f"{key}.png": buf.getvalue() if i < 4 else b"corrupt", f"{key}.txt": b"a coloured square"}
        write_tar(shards / f"shard-{s}.tar", members)
    result = train(tiny_config(tmp_path, train_data=str(shards / "*.tar"), max_steps=3, batch_size=3))
    assert result.step == 3 and result.skipped >= 1


def test_lr_schedule_warmup_then_constant_or_cosine():
    from ella.train.utils import lr_lambda

    constant = lr_lambda(10)
    assert constant(0) == pytest.approx(0.1) and constant(9) == 1.0 and constant(500) == 1.0
    cosine = lr_lambda(10, 110, 0.1)
    assert cosine(4) == pytest.approx(0.5) and cosine(10) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.55) and cosine(110) == pytest.approx(0.1) and cosine(200) == pytest.approx(0.1)


def test_timestep_power_shifts_training_towards_noisy_steps():
    from ella.train.loop import sample_timesteps

    uniform = sample_timesteps(20000, 1000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(uniform, torch.randint(0, 1000, (20000,), generator=torch.Generator().manual_seed(0)))
    noisy = sample_timesteps(20000, 1000, torch.Generator().manual_seed(0), power=2.0)
    assert noisy.min() >= 0 and noisy.max() <= 999
    # density 2t/T^2: P(t >= 600) = 1 - 0.6^2 = 0.64 (uniform: 0.40); mean 2T/3
    assert (noisy >= 600).float().mean().item() == pytest.approx(0.64, abs=0.02)
    assert (uniform >= 600).float().mean().item() == pytest.approx(0.40, abs=0.02)
    assert noisy.float().mean().item() == pytest.approx(666, abs=10)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_set_the_stop_flag_and_restore_puts_the_handler_back(signum):
    import os
    import signal

    from ella.train.utils import stop_flag

    signum = getattr(signal, signum)
    before = signal.getsignal(signum)
    stop, restore = stop_flag()
    os.kill(os.getpid(), signum)  # the handler runs instead of killing the test process
    assert stop["requested"] is True
    restore()
    assert signal.getsignal(signum) == before


def test_sdxl_training_with_the_connectors_pool_exports_it_and_the_xl_pipeline_uses_it(tmp_path):
    """3 steps on tiny SDXL parts: the UNet gets size ids and the connector's pooled embedding;
    the pool is exported with the connector and drives the XL pipeline without CLIP."""
    from ella import ELLA, ELLAStableDiffusionXLPipeline
    from ella.testing import tiny_sdxl_components

    config = tiny_config(tmp_path, model="tiny-sdxl", max_steps=3, validate_every=3, ema_decay=0)
    seen = []
    parts = load_frozen_parts(config, torch.device("cpu"), torch.float32)
    hook = parts.unet.register_forward_pre_hook(lambda m, args, kw: seen.append(kw["added_cond_kwargs"]),
                                                with_kwargs=True)
    result = train(config, parts)
    hook.remove()
    assert len(seen) == 3 + 4  # 3 training steps, then the validation grid's 4 denoising steps (XL pipeline)
    added = seen[0]
    assert added["time_ids"][0].tolist() == [16, 16, 0, 0, 16, 16] and added["text_embeds"].shape == (2, 16)
    ella = ELLA.from_pretrained(result.export_dir)
    assert ella.config.pooled_dim == 16 and "pool.proj.weight" in ella.state_dict()
    assert ella.state_dict()["pool.proj.weight"].abs().sum() > 0  # trained away from its zero init

    components = tiny_sdxl_components(with_clip=False)
    components["ella"] = ella
    pipe = ELLAStableDiffusionXLPipeline(**components, text_max_length=16, text_mode="flexible")
    pipe.set_progress_bar_config(disable=True)
    pooled = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args, kw: pooled.append(kw["added_cond_kwargs"]["text_embeds"]),
                                               with_kwargs=True)
    images = pipe("a red square", num_inference_steps=2, output_type="np").images
    hook.remove()
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    assert all(p.abs().sum() > 0 for p in pooled)  # the pool's, not SDXL's zeros


def test_sdxl_training_with_a_clip_pooled_encoder_from_raw_data_and_the_cache(tmp_path):
    from ella.testing import tiny_clip
    from ella.train.cache import build_cache

    encoder, tokenizer = tiny_clip(seed=1, with_projection=True)
    encoder.save_pretrained(tmp_path / "clip2")
    tokenizer.save_pretrained(tmp_path / "clip2")
    overrides = dict(model="tiny-sdxl", max_steps=1, caption_dropout=0.5, pooled_text_encoder=str(tmp_path / "clip2"))
    raw = train(tiny_config(tmp_path / "raw", **overrides))
    config = tiny_config(tmp_path / "cached", cache_dir=str(tmp_path / "cache"), **overrides)
    build_cache(config, load_frozen_parts(config, torch.device("cpu"), torch.float32, need_unet=False))
    cached = train(config)
    for (_, a), (_, b) in zip(raw.losses, cached.losses):
        assert abs(a - b) <= 1e-5
    from ella import ELLA

    assert ELLA.from_pretrained(raw.export_dir).config.pooled_dim is None  # CLIP gives the pooled embedding
    encoder, tokenizer = tiny_clip(seed=1, hidden_size=8, with_projection=True)
    encoder.save_pretrained(tmp_path / "narrow")
    tokenizer.save_pretrained(tmp_path / "narrow")
    with pytest.raises(ValueError, match="8-wide pooled embeddings but the UNet takes 16"):
        train(tiny_config(tmp_path / "bad", **{**overrides, "pooled_text_encoder": str(tmp_path / "narrow")}))


def test_logit_normal_timesteps_and_min_snr_weights():
    from diffusers import DDPMScheduler

    from ella.train.loop import min_snr_weights, sample_timesteps

    t = sample_timesteps(20000, 1000, torch.Generator().manual_seed(0), logit_normal=[0.0, 1.0])
    assert t.min() >= 0 and t.max() <= 999
    assert abs(t.float().median().item() - 500) < 15  # sigmoid(N(0, 1)): centred, mass mid-way
    assert (t < 100).float().mean() < 0.03 and ((t > 300) & (t < 700)).float().mean() > 0.45
    shifted = sample_timesteps(20000, 1000, torch.Generator().manual_seed(0), logit_normal=[1.0, 1.0])
    assert shifted.float().median() > 700

    eps = DDPMScheduler(num_train_timesteps=1000)
    steps = torch.tensor([0, 100, 500, 999])
    w = min_snr_weights(eps, steps, gamma=5.0)
    alpha_bar = eps.alphas_cumprod[steps].double()
    snr = alpha_bar / (1 - alpha_bar)
    assert torch.allclose(w, (snr.clamp(max=5) / snr).float())
    assert w[0] < 0.01 and w[-1] == 1.0  # clean steps weighted down, noisy steps as plain MSE
    v = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    assert torch.allclose(min_snr_weights(v, steps, gamma=5.0), (snr.clamp(max=5) / (snr + 1)).float())
    assert torch.all(min_snr_weights(eps, steps, gamma=1e9) == 1)  # gamma beyond every SNR: plain MSE


def test_recipe_options_train_and_are_checked(tmp_path):
    result = train(tiny_config(tmp_path, max_steps=2, snr_gamma=5.0, timestep_logit_normal=[0.0, 1.0]))
    assert len(result.losses) == 2 and all(np.isfinite(loss) for _, loss in result.losses)
    for bad, message in (({"snr_gamma": "-1"}, "snr_gamma"), ({"timestep_logit_normal": "[0.0, 0.0]"}, "std > 0"),
                         ({"timestep_logit_normal": "[0.0, 1.0]", "timestep_power": "2"}, "not both")):
        with pytest.raises(ValueError, match=message):
            load_config(CONFIG, bad).validate()


def test_text_noise_and_token_dropout_touch_only_real_tokens_of_kept_captions():
    from ella.train.loop import regularise_text

    config = load_config(CONFIG, {"text_noise": 0.5, "token_dropout": 0.5})
    text = torch.randn(3, 6, 4)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    rows = torch.tensor([True, True, False])  # the third caption was dropped (the empty prompt)
    out, out_mask = regularise_text(text, mask, rows, config, torch.Generator().manual_seed(0))
    assert torch.equal(out[2], text[2]) and torch.equal(out_mask[2], mask[2])
    assert torch.equal(out[0, 4:], text[0, 4:])  # padding untouched
    assert out_mask[:2].sum(1).min() >= 1 and out_mask.sum() < mask.sum()  # tokens cut, never all of a caption
    kept = out_mask[:2].bool()
    assert not torch.allclose(out[:2][kept], text[:2][kept])  # noise on what is still read
    assert (out[:2][~kept & mask[:2].bool()] == 0).all()
    again, _ = regularise_text(text, mask, rows, config, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)  # seeded


@pytest.mark.parametrize("name, value", [("text_noise", -0.1), ("token_dropout", 1.0)])
def test_text_regulariser_bounds_are_checked(name, value):
    with pytest.raises(ValueError, match=name):
        load_config(CONFIG, {name: value})
