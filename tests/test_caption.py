"""`ella caption`: dense recaptioning into caption sets beside the data, and training from them.
Captioners are tiny and random (a BLIP built locally) or ShapesWorld's exact one."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from conftest import write_tar
from PIL import Image

from ella.caption.captioners import Captioner, load_captioner
from ella.caption.run import caption_data
from ella.caption.sidecar import SidecarError, load_caption_set
from ella.cli import main
from ella.testing import tiny_captioner


def _image(i: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8))


@pytest.fixture
def folder_data(tmp_path):
    data = tmp_path / "data" / "images"
    data.mkdir(parents=True)
    for i in range(7):
        _image(i).save(data / f"img{i}.png")
        (data / f"img{i}.txt").write_text(f"alt text {i}")
    (data / "broken.png").write_bytes(b"not a png")  # counted, not fatal
    return str(data)


@pytest.fixture
def shard_data(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for s in range(3):
        members = {}
        for i in range(4):
            members |= {f"s{s}k{i}.png": _png(10 * s + i), f"s{s}k{i}.txt": f"alt {s}-{i}".encode()}
        write_tar(folder / f"shard-{s}.tar", members)
    return str(folder / "*.tar")


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    _image(i).save(buffer, format="PNG")
    return buffer.getvalue()


class Counting(Captioner):
    """A deterministic captioner that fails after `fail_after` images (a kill mid-run)."""

    def __init__(self, fail_after: int | None = None, name: str = "counting"):
        super().__init__(name=name, revision="1", prompt="p", settings={})
        self.fail_after, self.seen = fail_after, 0

    def caption(self, images, originals):
        self.seen += len(images)
        if self.fail_after is not None and self.seen > self.fail_after:
            raise KeyboardInterrupt("killed")
        return [f"{image.size[0]}px: " + str(int(np.asarray(image).sum())) for image in images]


def _records(out: str) -> dict:
    return {k: v for k, v in load_caption_set(out).items()}


@pytest.mark.parametrize("source", ["folder", "manifest", "shards"])
def test_every_source_is_captioned_beside_the_data(source, folder_data, shard_data, tmp_path):
    if source == "manifest":
        manifest = tmp_path / "data" / "manifest.jsonl"
        manifest.write_text("".join(json.dumps({"image": f"images/img{i}.png", "caption": f"alt {i}", "key": f"m{i}"})
                                    + "\n" for i in range(5)))
        data = str(manifest)
    else:
        data = folder_data if source == "folder" else shard_data
    captioner = load_captioner(tiny_captioner(str(tmp_path / "blip")), "short", max_new_tokens=4)
    out = str(tmp_path / "captions" / "blip")
    stats = caption_data(data, captioner, out, batch_size=2, chunk_size=3, progress=False)
    captions = _records(out)
    expected = {"folder": 7, "manifest": 5, "shards": 12}[source]
    assert stats.captioned == len(captions) == expected and all(captions.values())
    assert stats.unreadable == (1 if source == "folder" else 0)
    first = next(open(os.path.join(out, f), encoding="utf-8") for f in sorted(os.listdir(out)) if f.endswith(".jsonl"))
    lines = [json.loads(line) for line in first]
    assert lines[0]["sidecar"]["captioner"] == captioner.name and lines[1]["original"].startswith("alt")
    assert {"key", "caption", "original", "captioner", "revision", "prompt", "settings"} <= set(lines[1])
    if source == "shards":  # one sidecar per shard
        assert sorted(f for f in os.listdir(out) if f.endswith(".jsonl")) == [f"shard-{s}.jsonl" for s in range(3)]


def test_a_killed_run_resumes_to_exactly_the_one_run_result(shard_data, tmp_path):
    whole = str(tmp_path / "whole")
    caption_data(shard_data, Counting(), whole, batch_size=2, chunk_size=2, progress=False)
    resumed = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        caption_data(shard_data, Counting(fail_after=6), resumed, batch_size=2, chunk_size=2, progress=False)
    partial = _records(resumed)
    assert 0 < len(partial) < 12  # what was finished is kept, whole
    again = Counting()
    stats = caption_data(shard_data, again, resumed, batch_size=2, chunk_size=2, progress=False)
    assert stats.skipped == len(partial) and again.seen == 12 - len(partial)  # finished keys are not redone
    assert _records(resumed) == _records(whole)
    for name in os.listdir(resumed):  # no duplicate keys in any sidecar
        if name.endswith(".jsonl"):
            keys = [json.loads(line).get("key") for line in open(os.path.join(resumed, name))][1:]
            assert len(keys) == len(set(keys))


def test_two_ranks_give_the_union_of_one(shard_data, folder_data, tmp_path):
    for data in (shard_data, "shapes:2500"):  # tar shards, and a scheme cut into blocks of 1000
        one, two = str(tmp_path / f"one{len(data)}"), str(tmp_path / f"two{len(data)}")
        caption_data(data, Counting(), one, progress=False)
        parts = [caption_data(data, Counting(), two, rank=r, world=2, progress=False).captioned for r in (0, 1)]
        assert all(parts) and _records(two) == _records(one)


def test_sidecars_of_another_captioner_or_a_changed_shard_are_refused(shard_data, tmp_path):
    out = str(tmp_path / "set")
    caption_data(shard_data, Counting(), out, progress=False)
    with pytest.raises(SidecarError, match="one caption set per captioner"):
        caption_data(shard_data, Counting(name="other"), out, progress=False)
    os.remove(os.path.join(out, "set.json"))  # even past the set's own record, each sidecar says who wrote it
    with pytest.raises(SidecarError, match="captioner 'counting'"):
        caption_data(shard_data, Counting(name="other"), out, progress=False)
    caption_data(shard_data, Counting(), out, progress=False)  # the set.json is written again
    shard = shard_data.replace("*", "shard-1")
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("extra.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(SidecarError, match="shard-1.jsonl: the shard changed since it was captioned"):
        caption_data(shard_data, Counting(), out, progress=False)


def test_the_shapes_captioner_writes_what_is_there(tmp_path):
    from ella.shapes.data import ShapesSceneDataset
    from ella.shapes.judge import analyse, answer
    from ella.shapes.world import render

    out = str(tmp_path / "shapes")
    caption_data("shapes:40:alt", load_captioner("shapes"), out, progress=False)
    captions = _records(out)
    data = ShapesSceneDataset(40, captions="alt")
    for i in range(40):
        scene, alt, _ = data.item(i)
        text = captions[f"shapes{i}"]
        assert len(text) > len(alt)  # dense, where the alt text was not
        for o in scene.objects:  # every object, with every attribute
            assert f"{o.size} {o.color} {o.shape}" in text or f"{o.size} one" in text
        assert answer(analyse(render(scene)), f"Is the background {scene.background}?") == "yes"
    p3 = caption_data("shapes:40:alt", load_captioner("shapes:0.3"), str(tmp_path / "p3"), progress=False,
                      check="shapes")
    assert _records(str(tmp_path / "p3")) != captions  # an imperfect captioner writes other captions
    assert 0 < p3.rejected < 40  # ... and the judge's check finds its mistakes
    exact = caption_data("shapes:40:alt", load_captioner("shapes"), str(tmp_path / "checked"), progress=False,
                         check="shapes")
    assert exact.rejected == 0 and _records(str(tmp_path / "checked")) == captions  # the exact one is always kept


def test_training_reads_the_caption_set(tmp_path):
    """The features the trainer sees (the feature cache) are those of the set's captions."""
    import torch

    from ella.train.cache import CachedFeatureDataset, build_cache
    from ella.train.components import load_frozen_parts
    from ella.train.config import TrainConfig

    out = str(tmp_path / "set")
    caption_data("shapes:6:alt", load_captioner("shapes"), out, progress=False)
    config = TrainConfig(model="tiny-pixel", llm="tiny", train_data="shapes:6:alt", resolution=16, text_mode="flexible",
                         text_max_length=96, captions={out: 1.0}, cache_dir=str(tmp_path / "cache")).validate()
    parts = load_frozen_parts(config, torch.device("cpu"), torch.float32)
    build_cache(config, parts)
    cached = CachedFeatureDataset(config.cache_dir)
    encoder, captions = parts.encoder(config), load_caption_set(out)
    for i in range(len(cached)):
        sample = cached[i]
        expected = encoder.encode_padded([captions[sample["key"]]])
        n = int(expected.attention_mask.sum())
        torch.testing.assert_close(sample["text_features"][:n], expected.hidden_states[0, :n])
    mixed = TrainConfig(**{**config.__dict__, "captions": {out: 0.5, "original": 0.5}})
    from ella.train.cache import fingerprint

    assert fingerprint(mixed, parts) != fingerprint(config, parts)  # the cache key names the captions used


def tiny_rewriter(folder) -> str:
    """A tiny random Llama with a word tokenizer of ShapesWorld's words, saved: a text-only LLM as
    `--captioner rewrite:FOLDER` loads one."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ella.shapes.vocabulary import known_words
    from ella.word_tokenizer import word_tokenizer

    tokenizer = word_tokenizer(sorted(known_words()))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


class _Echo(Captioner):
    """Rewrites every caption as itself: what a perfect rewriter keeps."""

    def __init__(self):
        super().__init__(name="echo")

    def caption(self, images, originals):
        return list(originals)


def test_rewrites_are_checked_against_their_images(tmp_path):
    """`--check shapes`: a caption that says exactly what its image holds is kept; any other is
    recorded as rejected, never trained on, and not written again by a resumed run."""
    from ella.caption.run import caption_data
    from ella.shapes.data import ShapesSceneDataset
    from ella.shapes.reader import read_text

    data = ShapesSceneDataset(12, captions="brief")
    readable = {f"shapes{i}" for i in range(12) if read_text(data.item(i)[1]) is not None}
    assert 0 < len(readable) < 12  # some brief captions name no background: those say too little
    out = str(tmp_path / "echo")
    stats = caption_data("shapes:12:brief", _Echo(), out, progress=False, check="shapes")
    assert set(_records(out)) == readable and stats.rejected == 12 - len(readable)
    assert all(_records(out)[k] == data.item(int(k[6:]))[1] for k in readable)

    rewriter = load_captioner(f"rewrite:{tiny_rewriter(tmp_path / 'llm')}", max_new_tokens=12)
    assert "{caption}" in rewriter.prompt  # the rewrite preset is the default for a rewriter
    out = str(tmp_path / "rewrites")
    stats = caption_data("shapes:6:brief", rewriter, out, progress=False, check="shapes")
    lines = [json.loads(line) for name in sorted(os.listdir(out)) if name.endswith(".jsonl")
             for line in open(os.path.join(out, name))][1:]
    assert stats.captioned == 6 and len(lines) == 6 and all(r["check"] == "shapes" for r in lines)
    for r in lines:  # a random LLM's words do not describe the scene: every rewrite is rejected, and kept
        assert r["caption"] == "" and r["rejected"] and r["original"]
    assert _records(out) == {}
    again = caption_data("shapes:6:brief", rewriter, out, progress=False, check="shapes")
    assert again.skipped == 6 and again.captioned == 0  # a rejected rewrite is done, not pending
    texts = [r["rejected"] for r in lines]
    caption_data("shapes:6:brief", rewriter, str(tmp_path / "rerun"), progress=False, check="shapes")
    rerun = [json.loads(line) for name in sorted(os.listdir(tmp_path / "rerun")) if name.endswith(".jsonl")
             for line in open(os.path.join(tmp_path / "rerun", name))][1:]
    assert [r["rejected"] for r in rerun] == texts  # sampled, from seeds the captions give: the same rewrites


def test_a_set_written_without_the_check_is_refused_with_it(tmp_path):
    from ella.caption.run import caption_data

    out = str(tmp_path / "set")
    caption_data("shapes:4:brief", _Echo(), out, progress=False)
    with pytest.raises(SidecarError, match="check"):
        caption_data("shapes:4:brief", _Echo(), out, progress=False, check="shapes")


@pytest.mark.parametrize("args, message", [
    (["--captioner", "no-such-captioner"], "unknown captioner 'no-such-captioner'"),
    (["--captioner", "T5"], "has no image-text-to-text head"),
    (["--captioner", "shapes", "--out", "INSIDE"], "is inside the data folder"),
    (["--captioner", "shapes", "--max-new-tokens", "0"], "must be at least 1"),
    (["--captioner", "shapes", "--check", "nope"], "unknown caption check 'nope'"),
    (["--captioner", "rewrite:"], "the rewrite captioner names its LLM"),
    (["--captioner", "rewrite:T5", "--prompt", "no slot"], "must hold {caption}"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, folder_data, tmp_path, capsys):
    from ella.testing import tiny_t5

    model, tokenizer = tiny_t5()
    model.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    args = [a.replace("T5", str(tmp_path / "t5")).replace("INSIDE", os.path.join(folder_data, "caps")) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    before = sorted(os.listdir(tmp_path)) + sorted(os.listdir(folder_data))
    with pytest.raises(SystemExit) if "0" in args else _no_exit():
        code = main(["caption", folder_data, *args])
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and len([line for line in err if line.startswith("ella")]) <= 1
    assert sorted(os.listdir(tmp_path)) + sorted(os.listdir(folder_data)) == before


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
