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
    captioned = [r for r in lines[1:] if r["caption"]]
    assert lines[0]["sidecar"]["captioner"] == captioner.name and captioned[0]["original"].startswith("alt")
    assert {"key", "caption", "original", "captioner", "revision", "prompt", "settings", "file", "stamp"} <= set(
        captioned[0])
    if source == "folder":  # the unreadable file is named in the set, with why
        broken = [r for r in lines[1:] if r.get("unreadable")]
        assert [r["key"] for r in broken] == ["broken"] and "not a readable image" in broken[0]["unreadable"]
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
    # a mix's draw follows the run's seed unless captions_seed fixes it: then runs of any seed
    # share the captions, and so the cache
    reseeded = TrainConfig(**{**mixed.__dict__, "seed": 1})
    assert fingerprint(reseeded, parts) != fingerprint(mixed, parts)
    fixed = [TrainConfig(**{**mixed.__dict__, "seed": s, "captions_seed": 0}) for s in (0, 1)]
    assert fingerprint(fixed[0], parts) == fingerprint(fixed[1], parts) == fingerprint(mixed, parts)
    from ella.train.data import make_dataset

    draws = [[make_dataset(c.train_data, 16, c.seed, c.captions, captions_seed=c.captions_seed)[i]["caption"]
              for i in range(6)] for c in (*fixed, reseeded)]
    assert draws[0] == draws[1] != draws[2]


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
    (["--captioner", "shapes", "--device", "bogus"], "chooses its own device and dtype: drop --device bogus"),
    (["--captioner", "shapes", "--dtype", "fp16"], "drop --dtype fp16"),
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


# ---- a recaptioning run over data nobody in the project made: every file accounted for ----------


def _scene_image(objects: int, resolution: int = 32) -> Image.Image:
    """A ShapesWorld-like render with `objects` objects (more than 4: no ShapesWorld scene)."""
    from ella.shapes.world import Obj, Scene, render

    cells = list(range(objects))
    scene = Scene(tuple(Obj("circle", "red", "large", c) for c in cells), "gray")
    array = render(scene, resolution)
    return Image.fromarray((np.asarray(array) * 255).round().astype(np.uint8)) if not isinstance(array, Image.Image) \
        else array


def test_an_image_the_captioner_cannot_describe_is_recorded_and_the_run_goes_on(tmp_path, capsys, caplog):
    data = tmp_path / "data"
    data.mkdir()
    _scene_image(2).save(data / "a.png")
    _scene_image(6).save(data / "busy.png")  # six objects: the exact captioner has no words for it
    _image(1).save(data / "noise.png")
    out = str(tmp_path / "caps")
    assert main(["caption", str(data), "--captioner", "shapes", "--out", out]) == 0
    records = {r["key"]: r for name in os.listdir(out) if name.endswith(".jsonl")
               for r in (json.loads(line) for line in list(open(os.path.join(out, name)))[1:])}
    assert records["a"]["caption"] and "more than a ShapesWorld scene holds" in records["busy"]["failure"]
    assert "2 the captioner could not describe" in capsys.readouterr().out
    assert "busy.png: the captioner failed" in caplog.text  # named (the first few) on stderr
    assert main(["caption", str(data), "--captioner", "shapes", "--out", out]) == 0  # the rerun does not die on it
    assert "3 already there" in capsys.readouterr().out


def test_a_decompression_bomb_is_unreadable_named_and_counted(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    _image(0).save(data / "fine.png")
    Image.new("RGB", (64, 64)).save(data / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is over twice the limit: PIL refuses it
    stats = caption_data(str(data), Counting(), str(tmp_path / "caps"), progress=False)
    assert stats.captioned == 1 and stats.unreadable == 1
    assert "huge.png: too large to decode" in stats.named[0]


def test_subfolders_are_read_and_keys_are_unique(tmp_path):
    data = tmp_path / "data"
    (data / "a" / "deep").mkdir(parents=True)
    (data / "b").mkdir()
    _image(0).save(data / "a" / "0001.png")
    _image(1).save(data / "b" / "0001.png")  # the same name in two folders: two keys
    _image(2).save(data / "a" / "deep" / "x y é.png")
    (data / "a" / "deep" / "x y é.txt").write_text("spaced unicode")
    stats = caption_data(str(data), Counting(), str(tmp_path / "caps"), progress=False)  # a folder of folders
    assert stats.captioned == 3 and set(_records(str(tmp_path / "caps"))) == {"a/0001", "b/0001", "a/deep/x y é"}
    _image(3).save(data / "b" / "0001.jpg")
    with pytest.raises(ValueError, match="0001.jpg.*same name but for the extension|same name but for the extension"):
        caption_data(str(data), Counting(), str(tmp_path / "caps2"), progress=False)


def test_a_set_refuses_other_data_and_recaptions_a_replaced_image(folder_data, tmp_path):
    out = str(tmp_path / "caps")
    caption_data(folder_data, Counting(), out, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    _image(5).save(other / "img0.png")
    with pytest.raises(SidecarError, match="holds captions of .*images, not of .*other"):
        caption_data(str(other), Counting(), out, progress=False)
    before = _records(out)["img0"]
    _image(99).resize((30, 30)).save(os.path.join(folder_data, "img0.png"))  # replaced: new content, new size
    again = Counting()
    stats = caption_data(folder_data, again, out, progress=False)
    assert again.seen == 1 and stats.skipped == 7 and _records(out)["img0"] != before and \
        _records(out)["img0"].startswith("30px")


def test_tar_shards_of_one_name_in_two_folders_get_two_sidecars(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / "shards" / folder).mkdir(parents=True)
        write_tar(tmp_path / "shards" / folder / "shard-0.tar",
                  {f"{folder}k.png": _png(ord(folder)), f"{folder}k.txt": b"alt"})
    out = str(tmp_path / "caps")
    caption_data(str(tmp_path / "shards" / "*" / "*.tar"), Counting(), out, progress=False)
    assert sorted(f for f in os.listdir(out) if f.endswith(".jsonl")) == ["a--shard-0.jsonl", "b--shard-0.jsonl"]
    assert set(_records(out)) == {"ak", "bk"}
    caption_data(str(tmp_path / "shards" / "*" / "*.tar"), Counting(), out, progress=False)  # resumes, no refusal


def test_a_resumed_run_skips_by_key_without_decoding(shard_data, tmp_path, monkeypatch):
    import ella.caption.sources as sources

    out = str(tmp_path / "caps")
    caption_data(shard_data, Counting(), out, progress=False)
    decoded = []
    real = sources.decode
    monkeypatch.setattr(sources, "decode", lambda *a: decoded.append(a[1]) or real(*a))
    stats = caption_data(shard_data, Counting(), out, progress=False)
    assert stats.skipped == 12 and decoded == []


@pytest.mark.parametrize("damage, message", [
    ("5\n", "line 2: not a caption record"),
    ('{"caption": "x"}\n', "line 2: not a caption record"),
])
def test_a_damaged_sidecar_or_set_file_is_one_line_naming_it(tmp_path, capsys, damage, message):
    out = tmp_path / "caps"
    assert main(["caption", "shapes:4", "--captioner", "shapes", "--out", str(out)]) == 0
    sidecar = out / "items-00000.jsonl"
    lines = sidecar.read_text().splitlines(keepends=True)
    sidecar.write_text(lines[0] + damage + "".join(lines[2:]))
    capsys.readouterr()
    assert main(["caption", "shapes:4", "--captioner", "shapes", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "items-00000.jsonl" in err[0] and message in err[0]
    sidecar.write_text("".join(lines))
    (out / "set.json").write_text("{damaged")
    assert main(["caption", "shapes:4", "--captioner", "shapes", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "set.json is not valid JSON" in err and "damaged" in err


def test_a_manifest_error_names_its_line(tmp_path):
    (tmp_path / "data").mkdir()
    manifest = tmp_path / "data" / "m.jsonl"
    manifest.write_text('{"image": "a.png", "caption": "x"}\n\n{not json\n')
    with pytest.raises(ValueError, match="m.jsonl, line 3: not JSON"):
        caption_data(str(manifest), Counting(), str(tmp_path / "caps"), progress=False)


def test_two_runs_on_one_set_the_second_is_refused(shard_data, tmp_path):
    from ella.fileio import folder_lock

    out = str(tmp_path / "caps")
    with folder_lock(out), pytest.raises(ValueError, match="another ella run is writing to"):
        caption_data(shard_data, Counting(), out, progress=False)


def test_progress_lines_in_logs_with_a_total(shard_data, folder_data, tmp_path, monkeypatch, caplog):
    import ella.caption.run as run

    monkeypatch.setattr(run, "LOG_EVERY_S", 0.0)
    with caplog.at_level("INFO", logger="ella.caption.run"):
        caption_data(folder_data, Counting(), str(tmp_path / "caps"), progress=False)
    assert "captioning: 7 of 8 images done" in caplog.text  # the total is known for folders


def test_a_run_where_every_image_is_unreadable_fails(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.png").write_bytes(b"broken")
    assert main(["caption", str(data), "--captioner", "shapes", "--out", str(tmp_path / "caps")]) == 2
    assert "none of the 3 images could be captioned" in capsys.readouterr().err


# ---- the data engine at scale: nested folders and shards, broken, huge and busy files, two kills ----


def _huge_png() -> bytes:
    """A PNG whose header says 20,000 x 20,000 pixels: over PIL's decompression-bomb limit (it is
    refused from the header, so the file itself is tiny)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _engine_data(root, n: int) -> tuple[dict, set, set]:
    """n items over nested folders and tar shards, 1 % each broken, huge and busy (six objects: the
    exact captioner has no words for them). Returns ({data spec: keys}, unreadable keys, busy keys)."""
    import random as rnd

    from ella.shapes.world import render, sample_scene

    rng, specs, unreadable, busy = rnd.Random(0), {}, set(), set()
    folder, shards = root / "folders", root / "shards"
    members: dict[str, dict[str, bytes]] = {}
    for i in range(n):
        kind = ("broken", "huge", "busy", *["ok"] * 97)[i % 100]
        if kind == "busy":
            image = _scene_image(6)
        elif kind == "ok":
            image = render(sample_scene(rng))
        buffer = io.BytesIO()
        if kind in ("ok", "busy"):
            image.save(buffer, format="PNG")
        data = {"broken": b"\x89PNG broken", "huge": _huge_png()}.get(kind, buffer.getvalue())
        in_tar = i % 2 == 1
        if in_tar:
            shard = f"part-{i % 4 // 2}/shard-{i % 8 // 4}.tar"  # two folders, shards of one name in each
            key = f"t{i:06d}"
            members.setdefault(shard, {})[f"{key}.png"] = data
            spec = str(shards / "*" / "*.tar")
        else:
            key = f"sub {i % 5}/deep/{i:06d}"
            path = folder / f"{key}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            spec = str(folder)
        specs.setdefault(spec, set()).add(key)
        unreadable |= {key} if kind in ("broken", "huge") else set()
        busy |= {key} if kind == "busy" else set()
    for name, content in members.items():
        (shards / name).parent.mkdir(parents=True, exist_ok=True)
        write_tar(shards / name, content)
    return specs, unreadable, busy


def _run_killed(data: str, out: str, kills: int) -> None:
    """`ella caption` in a process killed (SIGKILL) after each of its first `kills` sidecar writes."""
    import subprocess
    import sys
    import time

    for _ in range(kills):
        before = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)} if os.path.isdir(out) else {}
        process = subprocess.Popen([sys.executable, "-m", "ella.cli", "caption", data, "--captioner", "shapes",
                                    "--out", out, "--chunk-size", "64", "-q"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while process.poll() is None and time.time() < deadline:
            now = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)} if os.path.isdir(out) else {}
            if any(f.endswith(".jsonl") and before.get(f) != t for f, t in now.items()):
                process.kill()  # mid-run: a sidecar was just written, more is in flight
                break
            time.sleep(0.01)
        process.wait()
    assert main(["caption", data, "--captioner", "shapes", "--out", out, "-q"]) == 0


def _check_engine(specs: dict, unreadable: set, busy: set, root) -> None:
    for i, (data, keys) in enumerate(specs.items()):
        out = str(root / f"captions-{i}")
        _run_killed(data, out, kills=2)
        from ella.caption.sidecar import sidecar_names

        assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]  # a kill's leftovers are cleared
        records = [json.loads(line) for name in sidecar_names(out)
                   for line in list(open(os.path.join(out, name), encoding="utf-8"))[1:]]
        assert set(load_caption_set(out)) == keys - unreadable - busy
        seen = [r["key"] for r in records]
        assert len(seen) == len(set(seen)) and set(seen) == keys  # every file once, no key collision
        for r in records:
            if r["key"] in unreadable:
                assert r["caption"] == "" and r["unreadable"]
            elif r["key"] in busy:
                assert r["caption"] == "" and "more than a ShapesWorld scene holds" in r["failure"]
            else:
                assert r["caption"] and r["file"] and r["stamp"]


def test_the_data_engine_at_20000_images_with_two_kills(tmp_path):
    """About 25 s on the 2-core development CPU."""
    _check_engine(*_engine_data(tmp_path, 20_000), tmp_path)


def test_training_reads_a_caption_set_by_key_from_an_index_rebuilt_when_it_changes(tmp_path):
    import pickle

    from ella.caption.sidecar import CaptionIndex

    out = str(tmp_path / "caps")
    caption_data("shapes:30", Counting(), out, progress=False, chunk_size=8)
    index = CaptionIndex(out)
    whole = load_caption_set(out)
    assert len(index) == len(whole) == 30 and all(index[k] == v for k, v in whole.items())
    assert index.get("no-such-key") is None
    worker = pickle.loads(pickle.dumps(index))  # as a DataLoader worker gets it: it opens its own connection
    assert worker.get(next(iter(whole))) == next(iter(whole.values()))
    sidecar = os.path.join(out, "items-00000.jsonl")
    lines = open(sidecar).read().splitlines(keepends=True)
    record = json.loads(lines[1])
    lines[1] = json.dumps({**record, "caption": "rewritten"}) + "\n"
    open(sidecar, "w").write("".join(lines))
    assert CaptionIndex(out)[record["key"]] == "rewritten"  # a changed sidecar: the index is built again
