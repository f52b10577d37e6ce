"""Faults found by a probe (kills, corrupt files, hostile paths, wrong values): each is a clear
one-line error, a refusal, or work that survives, through the real entry points."""

import csv
import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from ella.bench.dpg import CSV_COLUMNS, DPGDataError, load_csv
from ella.cli import main
from ella.fileio import folder_lock
from ella.train import load_config, train

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")


def one_line_error(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ella: error:") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("item_id", ["../../../x", "/tmp/abs", "a/b", "..", ""])
def test_csv_item_ids_that_are_paths_are_refused_with_their_row(tmp_path, item_id):
    path = tmp_path / "q.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        row = dict.fromkeys(CSV_COLUMNS, "x") | {"proposition_id": "1", "dependency": "0"}
        writer.writerow(row | {"item_id": "fine"})
        writer.writerow(row | {"item_id": item_id})
    with pytest.raises(DPGDataError, match="row 2: item_id .* is not a plain file name"):
        load_csv(str(path))


def _shapes_items(tmp_path, n=2):
    from ella.images import make_grid, save_atomic
    from ella.shapes.bench import write_heldout
    from ella.shapes.world import render

    csv_path, _, scenes = write_heldout(n, str(tmp_path / "q"))
    images = tmp_path / "images"
    for item_id, scene in scenes.items():
        save_atomic(make_grid([render(scene)] * 4, cols=2), str(images / f"{item_id}.png"))
    return csv_path, images


def test_score_never_writes_through_planted_links_and_files_get_the_umask_mode(tmp_path):
    csv_path, images = _shapes_items(tmp_path)
    out = tmp_path / "scores"
    out.mkdir()
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    for name in ("summary.json", "scores.jsonl", "answers.jsonl"):
        os.symlink(target, out / name)
    os.symlink(tmp_path / "dangling-target", out / "summary.md")
    old = os.umask(0o022)
    try:
        assert main(["bench", "dpg", "score", "--images", str(images), "--csv", csv_path, "--vqa", "shapes",
                     "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert target.read_text() == "keep me" and not (tmp_path / "dangling-target").exists()
    for name in ("summary.json", "scores.jsonl", "answers.jsonl", "summary.md"):
        assert not os.path.islink(out / name) and (out / name).is_file()
    assert os.stat(out / "summary.json").st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_tiny_images_are_one_failed_item_not_an_aborted_run(tmp_path, capsys):
    csv_path, images = _shapes_items(tmp_path, n=3)
    first = sorted(os.listdir(images))[0]
    Image.new("RGB", (2, 2)).save(images / first)
    assert main(["bench", "dpg", "score", "--images", str(images), "--csv", csv_path, "--vqa", "shapes",
                 "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "(1 failed: score 0 in the overall and every category)" in out
    import json

    summary = json.loads((tmp_path / "s" / "summary.json").read_text())  # ground truth: 2 of 3 items right
    assert summary["overall"] == pytest.approx(200 / 3)
    assert summary["l1"]["global"] < 100 and summary["l1"]["entity"] < 100  # its questions count in their categories
    assert main(["bench", "dpg", "score", "--images", str(images), "--csv", csv_path, "--vqa", "shapes",
                 "--out", str(tmp_path / "s2"), "--skip-missing"]) == 0
    assert "on 2 items (1 failed: left out of the overall and the categories)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "s2" / "summary.json").read_text())
    assert summary["overall"] == 100 and all(v == 100 for v in summary["l1"].values())


def test_a_second_run_on_a_locked_folder_stops_at_once(tmp_path):
    with folder_lock(str(tmp_path)):
        with pytest.raises(ValueError, match="another ella run is writing to"):
            with folder_lock(str(tmp_path)):
                pass
    with folder_lock(str(tmp_path)):  # released at the end of the first run
        pass


@pytest.mark.parametrize("text, message", [
    ("max_steps: [1, 2\n", "not valid YAML"),
    ("max_steps: 2.5\n", "max_steps: expected int"),
    ("max_steps: ten\n", "max_steps: expected int"),
    ("lr: fast\n", "lr: expected float"),
    ("validation_prompts: a red square\n", "validation_prompts: expected list"),
    ("connector_overrides: [1, 2]\n", "connector_overrides: expected dict"),
])
def test_bad_training_configs_are_one_line_before_anything_loads(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(open(CONFIG).read() + text)
    assert message in one_line_error(capsys, ["train", str(path), "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    config = load_config(CONFIG, dict(output_dir=str(tmp_path / "run"), max_steps=4, checkpoint_every=2,
                                      validate_every=0, batch_size=2, keep_checkpoints=3))
    train(config)
    newest = tmp_path / "run" / "checkpoints" / "step-00000004" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # torn after its rename
    again = load_config(CONFIG, dict(output_dir=str(tmp_path / "run"), max_steps=5, checkpoint_every=2,
                                     validate_every=0, batch_size=2, resume=True))
    with caplog.at_level("INFO"):
        result = train(again)
    assert "unreadable" in caplog.text and "resumed from" in caplog.text and "step-00000002" in caplog.text
    assert result.step == 5


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_stopped_run_exits_non_zero_and_leaves_the_last_export(tmp_path, monkeypatch, capsys, signame):
    import ella.train.loop as loop

    args = ["train", CONFIG, "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2",
            "--validate-every", "0", "--checkpoint-every", "10"]
    assert main(args) == 0
    capsys.readouterr()
    export = tmp_path / "run" / "export" / "diffusion_pytorch_model.safetensors"
    before = export.read_bytes()
    real_step = loop.train_step

    def step_then_signal(run, *a):  # the signal arrives during step 3
        loss = real_step(run, *a)
        if run.result.step == 3:
            os.kill(os.getpid(), getattr(signal, signame))
        return loss

    monkeypatch.setattr(loop, "train_step", step_then_signal)
    code = main(args[:4] + ["--max-steps", "6"] + args[6:] + ["--resume", "true"])
    assert code == 128 + getattr(signal, signame)
    out = capsys.readouterr()
    assert "stopped at step 3 of 6" in out.err and "exported" not in out.out
    assert export.read_bytes() == before  # the unfinished connector did not replace it
    assert (tmp_path / "run" / "checkpoints" / "step-00000003").is_dir()  # the exact step is saved


def test_sixteen_bit_training_images_keep_their_level(tmp_path):
    from ella.train.data import load_image

    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    pixels = load_image(str(tmp_path / "deep.png"), 8)
    assert pixels.shape == (3, 8, 8)
    assert pixels.mean().item() == pytest.approx(round(40000 / 257) / 127.5 - 1, abs=1e-6)  # 61 %, not white


def test_nan_latents_are_refused(tiny_pipe):
    latents = torch.full((1, tiny_pipe.unet.config.in_channels, 8, 8), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        tiny_pipe("a red circle", latents=latents, num_inference_steps=1)


def test_generate_names_the_words_shapesworld_never_saw_and_bad_prompts(tmp_path, capsys):
    assert main(["generate", "a fluffy orange cat", "--steps", "1", "--out", str(tmp_path / "c.png")]) == 0
    err = capsys.readouterr().err
    assert "no ShapesWorld training caption uses these words: fluffy (read most like '" in err
    assert "orange (read most like '" in err and "cat (read most like '" in err
    assert "may still follow them" in err  # a word it never saw is not a word it cannot draw
    assert main(["generate", "a large red circle at the top left", "--steps", "1", "--out", str(tmp_path / "d.png")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "not valid UTF-8" in one_line_error(capsys, ["generate", "a red \udcff circle", "--out", str(tmp_path / "u.png")])
    assert "at most 1000 steps" in one_line_error(capsys, ["generate", "a red circle", "--steps", "100000",
                                                           "--out", str(tmp_path / "s.png")])
    for args in (["--seed", str(10**23)], ["--size", "100000"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", "a red circle", *args])
        assert exit_info.value.code == 2


def test_malformed_inputs_from_elsewhere_are_one_line(tmp_path, capsys):
    manifest = tmp_path / "data.csv"
    manifest.write_text("file,caption\na.png,a red square\n")
    config = ["train", CONFIG, "--train-data", str(manifest), "--output-dir", str(tmp_path / "run")]
    assert "no 'image'" in one_line_error(capsys, config)
    answers = tmp_path / "answers.jsonl"
    answers.write_text('["item", 0]\n')
    assert "not an answer record" in one_line_error(capsys, ["bench", "dpg", "score", "--images", str(tmp_path),
                                                            "--csv", _shapes_items(tmp_path)[0], "--vqa",
                                                            f"replay:{answers}", "--out", str(tmp_path / "s")])
    (tmp_path / "nosummary").mkdir()
    (tmp_path / "nosummary" / "summary.json").write_text('{"mode": "corrected"}')
    assert "no overall score" in one_line_error(capsys, ["bench", "dpg", "compare", str(tmp_path / "nosummary")])
    sd = tmp_path / "sd"
    (sd / "unet").mkdir(parents=True)
    from ella import ELLA

    ELLA.from_preset("tiny").save_pretrained(str(tmp_path / "connector"))
    message = one_line_error(capsys, ["generate", "a cat", "--model", str(sd), "--ella", str(tmp_path / "connector"),
                                      "--out", str(tmp_path / "x.png")])
    assert "is not a Stable Diffusion folder: it has no unet/config.json" in message
    from ella.text_encoders import load_text_encoder

    with pytest.raises(ValueError, match="not a text encoder folder: it has no config.json"):
        load_text_encoder(str(sd))


def test_interrupted_saves_leave_nothing_that_counts(tmp_path):
    from ella.train.checkpoint import list_checkpoints, save_training_state

    root = tmp_path / "checkpoints"
    (root / ".tmp-step-00000009").mkdir(parents=True)  # a save killed before its rename
    (root / "step-00000003").mkdir()  # a prune killed after it deleted the state
    (root / "step-00000003" / "config.yaml").write_text("x")
    for step in (4, 5, 6):
        save_training_state(str(tmp_path), step, {"step": torch.tensor(step)}, "y", keep=2)
    assert sorted(os.listdir(root)) == ["step-00000005", "step-00000006"]
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step-00000005", "step-00000006"]


@pytest.mark.parametrize("argv", [
    ["train", "{path}"],
    ["generate", "a red circle", "--init-image", "{path}"],
    ["bench", "dpg", "score", "--csv", "{path}", "--images", "{dir}", "--out", "{dir}/out"],
])
def test_permission_denied_is_not_reported_as_not_found(tmp_path, monkeypatch, capsys, argv):
    """os.path.isfile answers False for a file inside a folder that cannot be entered; the error must
    say so, not "not found". (The suite runs as root, which no permission stops: os.stat is made to
    answer as it does for another user.)"""
    import os as os_module

    from ella.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    path = locked / "thing.yaml"
    real_stat = os_module.stat

    def stat(p, *a, **k):
        if str(p).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", str(p))
        return real_stat(p, *a, **k)

    monkeypatch.setattr(os_module, "stat", stat)
    code = main([a.format(path=path, dir=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "permission denied" in err and "not found" not in err


def test_hub_vqa_model_fails_fast_when_the_hub_cannot_be_reached(monkeypatch):
    import time
    import urllib.request

    from huggingface_hub import constants

    from ella.bench.vqa import TransformersVQABackend

    start = time.perf_counter()
    with pytest.raises(ValueError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        TransformersVQABackend("Salesforce/blip-vqa-base")  # the suite runs offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(request, timeout):
        assert timeout <= 10
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(ValueError, match="cannot be reached .*Name or service not known"):
        TransformersVQABackend("Salesforce/blip-vqa-base")
    assert time.perf_counter() - start < 30  # not the hub client's minutes of retries


@pytest.mark.parametrize("line", ['["item", 0]', '{"item_id": "heldout0", "question": "q", "answer": "yes"}', "5"])
def test_a_damaged_answer_log_in_the_score_folder_names_its_line_and_the_fix(tmp_path, capsys, line):
    csv_path, images = _shapes_items(tmp_path)
    out = tmp_path / "scores"
    assert main(["bench", "dpg", "score", "--images", str(images), "--csv", csv_path, "--vqa", "shapes",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    answers = out / "answers.jsonl"
    lines = answers.read_text().splitlines()
    answers.write_text("\n".join(lines[:2] + [line] + lines[2:]) + "\n")
    error = one_line_error(capsys, ["bench", "dpg", "score", "--images", str(images), "--csv", csv_path, "--vqa",
                                    "shapes", "--out", str(out)])
    assert f"{answers}, line 3: not an answer record" in error and "delete that line" in error


def test_files_that_are_not_what_they_should_be_are_named(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file, not a folder" in one_line_error(capsys, ["generate", "a cat", "--model", str(afile),
                                                                "--ella", "x.safetensors"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"overall": 1,\n')
    error = one_line_error(capsys, ["bench", "dpg", "compare", str(tmp_path / "run")])
    assert "summary.json is not valid JSON (line 2" in error
    latin = tmp_path / "q.csv"
    latin.write_bytes(",".join(CSV_COLUMNS).encode() + b"\nd\xe9j\xe0,1\n")
    assert f"{latin} is not UTF-8 text" in one_line_error(capsys, ["bench", "dpg", "score", "--images", str(tmp_path),
                                                                   "--csv", str(latin), "--out", str(tmp_path / "s")])
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "a.txt").write_bytes(b"caf\xe9\n")
    error = one_line_error(capsys, ["bench", "dpg", "generate", "--prompts", str(tmp_path / "prompts"), "--out",
                                    str(tmp_path / "gen")])
    assert "a.txt is not UTF-8 text" in error
    assert f"{afile} exists and is not a folder" in one_line_error(
        capsys, ["bench", "shapes", "--out", str(afile), "--prompts", "1"])


def test_a_link_planted_where_an_image_goes_is_not_counted_as_done(tmp_path):
    from ella.bench.runner import generate_images

    target = tmp_path / "victim.png"
    Image.new("RGB", (4, 4)).save(target)
    out = tmp_path / "images"
    out.mkdir()
    os.symlink(target, out / "a.png")

    class Pipe:
        def __call__(self, prompts, num_images_per_prompt, generator, **kw):
            class Out:
                images = [Image.new("RGB", (8, 8), "red")] * (len(prompts) * num_images_per_prompt)
            return Out()

    assert generate_images(Pipe(), {"a": "a red square"}, str(out), samples=1) == ["a"]  # drawn, not skipped
    assert not os.path.islink(out / "a.png") and Image.open(target).getpixel((0, 0)) == (0, 0, 0)


def test_exported_and_converted_weights_follow_the_umask(tmp_path):
    from safetensors.torch import save_file

    from ella import ELLA

    save_file(ELLA.from_preset("tiny").state_dict(), str(tmp_path / "c.safetensors"))
    old = os.umask(0o022)
    try:
        assert main(["convert", str(tmp_path / "c.safetensors"), str(tmp_path / "folder"), "--heads", "2"]) == 0
        assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "back.safetensors")]) == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "folder" / "diffusion_pytorch_model.safetensors", tmp_path / "back.safetensors"):
        assert os.stat(path).st_mode & 0o777 == 0o644, path


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch, capsys):
    import errno

    from PIL import Image as PILImage

    from ella.bench.runner import AnswerLog

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PILImage.Image, "save", full)
    out = tmp_path / "out.png"
    assert main(["generate", "a red circle", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no space left on the device to write {out}" in err[0]
    log = AnswerLog(str(tmp_path / "answers.jsonl"))
    monkeypatch.setattr(log, "file", type("Full", (), {"write": full, "flush": full, "fileno": lambda self: 0})())
    with pytest.raises(OSError, match="answers.jsonl"):
        log.add("item", 0, "1", "q?", "yes")


def test_convert_names_a_bad_config(tmp_path, capsys):
    from ella import ELLA

    ELLA.from_preset("tiny").save_pretrained(tmp_path / "good")
    config = json.loads((tmp_path / "good" / "config.json").read_text())
    for name, broken in (("typed", {**config, "heads": "four"}),
                         ("bare", {k: v for k, v in config.items() if k.startswith("_")})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(broken))
        for f in os.listdir(tmp_path / "good"):
            if f.endswith(".safetensors"):
                (tmp_path / name / f).write_bytes((tmp_path / "good" / f).read_bytes())
    (tmp_path / "empty.safetensors").mkdir()
    cases = [("typed", "heads must be a positive whole number, got 'four'"), ("bare", "lacks width, layers, heads"),
             ("empty.safetensors", "a folder without config.json")]
    for src, message in cases:
        assert main(["convert", str(tmp_path / src), str(tmp_path / "x.safetensors")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_a_training_resolution_the_model_cannot_take_is_refused(tmp_path, capsys):
    assert main(["train", CONFIG, "--output-dir", str(tmp_path / "run"), "--resolution", "5", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resolution 5 is not a multiple of" in err[0]
    assert not (tmp_path / "run" / "export").exists()


def test_an_init_image_over_the_decompression_bomb_limit_is_one_line(tmp_path, capsys):
    from test_caption import _huge_png

    (tmp_path / "huge.png").write_bytes(_huge_png())  # a header claiming 20,000 x 20,000 pixels
    assert main(["generate", "a red circle", "--init-image", str(tmp_path / "huge.png"), "--steps", "1",
                 "--out", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too large to decode" in err[0]
