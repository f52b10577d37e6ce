import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ella import ELLA, ELLAStableDiffusionPipeline
from ella.cli import main
from ella.testing import tiny_components


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    ELLAStableDiffusionPipeline(**tiny_components(with_clip=True), text_mode="flexible").save_pretrained(path)
    return path


def test_help_and_env_through_the_console_script():
    for args in (["--help"], ["generate", "--help"], ["env"]):
        out = subprocess.run([sys.executable, "-m", "ella.cli", *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    assert "torch" in out.stdout and "llm minilm: " in out.stdout and "llm smollm2: " in out.stdout


def test_generate_writes_a_png_and_a_grid(pipe_dir, tmp_path):
    out = tmp_path / "one.png"
    assert main(["generate", "a red circle", "--model", str(pipe_dir), "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out).size == (16, 16)
    jpeg = tmp_path / "one.jpg"  # the format follows the extension
    assert main(["generate", "a red circle", "--model", str(pipe_dir), "--steps", "2", "--out", str(jpeg)]) == 0
    assert Image.open(jpeg).format == "JPEG"
    grid = tmp_path / "grid.png"
    args = ["generate", "two cats", "--model", str(pipe_dir), "--steps", "2", "--num-images", "3", "--out", str(grid),
            "--compare", "--size", "32", "--negative", "blurry"]
    assert main(args) == 0
    assert Image.open(grid).size == (2 * 32, 3 * 32)  # base column, ELLA column; a row per seed


def test_generate_with_another_scheduler_is_seeded(pipe_dir, tmp_path):
    # euler-a draws fresh noise at every step: the same --seed must still give the same image
    outs = [tmp_path / f"{i}.png" for i in range(3)]
    for out, seed in zip(outs, ("7", "7", "8")):
        args = ["generate", "a red circle", "--model", str(pipe_dir), "--steps", "3", "--scheduler", "euler-a",
                "--seed", seed, "--out", str(out)]
        assert main(args) == 0
    a, b, c = (np.asarray(Image.open(out)) for out in outs)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "a cat", "--model", "/no/such/model"], "model folder not found"),
        (["generate", "a cat", "--model", "/no/such/model", "--scheduler", "bogus"], "unknown scheduler 'bogus'"),
        # a hub id is not a missing folder; the connector is checked before any download
        (["generate", "a cat", "--model", "org/model", "--ella", "/no/such.safetensors"], "checkpoint file not found"),
        (["generate", "   ", "--model", "X"], "prompt is empty"),
        (["generate", "a cat " * 3000, "--model", "X"], "characters long"),
        (["generate", "a cat", "--model", "PIPE", "--size", "18"], "multiples of 4"),
        (["generate", "a cat", "--model", "PIPE", "--llm", "minilm"], "saved ELLA pipeline"),
        (["generate", "a cat", "--model", "PIPE", "--device", "cuda:99"], "is not available here"),
        (["bench", "shapes", "--models", ","], "names no model"),
        (["generate", "a cat", "--model", "X", "--out", "TMP"], "not an image file name"),  # a folder
        (["generate", "a cat", "--model", "X", "--out", "TMP/a.xyz"], "not an image file name"),
        (["generate", "a cat", "--model", "X", "--out", "BAD/a.png"], "cannot create the folder"),  # under a file
        (["bench", "shapes", "--out", "BAD", "--prompts", "1"], "exists and is not a folder"),  # an output folder that is a file
        (["convert", "/no/such.safetensors", "out"], "not found"),
        (["convert", "BAD", "out"], "not an ELLA connector checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(pipe_dir, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    places = {"PIPE": str(pipe_dir), "BAD": str(bad), "TMP": str(tmp_path)}  # also as a prefix: "TMP/a.xyz"

    def place(arg: str) -> str:
        head, sep, tail = arg.partition("/")
        return places[head] + sep + tail if head in places else arg

    args = [place(a) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ella: error:") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_a_scheduler_without_its_dependency_is_one_line(capsys):
    if importlib.util.find_spec("torchsde") is not None:
        pytest.skip("torchsde is installed here")
    assert main(["generate", "a cat", "--model", "/no/such/model", "--scheduler", "DPMSolverSDEScheduler"]) == 2
    assert "needs torch and torchsde installed" in capsys.readouterr().err  # before the model is looked for


def test_convert_round_trip(tmp_path):
    model = ELLA.from_preset("tiny")
    save_file(model.state_dict(), str(tmp_path / "c.safetensors"))
    assert main(["convert", str(tmp_path / "c.safetensors"), str(tmp_path / "folder"), "--dtype", "fp16",
                 "--heads", "2"]) == 0
    assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "back.safetensors")]) == 0
    back = ELLA.from_single_file(str(tmp_path / "back.safetensors"))
    assert back.config.heads == 2
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v.half().float()), k


def _same_model(a: ELLA, b: ELLA) -> bool:
    config = lambda m: {k: v for k, v in m.config.items() if not k.startswith("_")}  # noqa: E731
    return config(a) == config(b) and a.state_dict().keys() == b.state_dict().keys() and all(
        torch.equal(v, b.state_dict()[k]) and v.dtype == b.state_dict()[k].dtype for k, v in a.state_dict().items())


def _shipped_connector_dirs():
    from ella.shapes.catalog import ASSETS, CONNECTORS

    return [os.path.join(ASSETS, f"ella-{name}") for name in CONNECTORS]


@pytest.mark.parametrize("folder", _shipped_connector_dirs(), ids=os.path.basename)
def test_convert_round_trips_every_shipped_connector_exactly(folder, tmp_path):
    """folder -> file -> folder and file -> folder -> file give the same model, heads included
    (the one setting weight shapes cannot tell: the single file carries the config)."""
    original = ELLA.from_pretrained(folder)
    file, again = tmp_path / "c.safetensors", tmp_path / "again"
    assert main(["convert", folder, str(file)]) == 0
    assert main(["convert", str(file), str(again)]) == 0
    assert _same_model(original, ELLA.from_pretrained(str(again)))
    assert _same_model(original, ELLA.from_single_file(str(file)))
    assert main(["convert", str(again), str(tmp_path / "back.safetensors")]) == 0
    assert _same_model(ELLA.from_single_file(str(file)), ELLA.from_single_file(str(tmp_path / "back.safetensors")))


def test_convert_round_trips_the_official_layout_and_says_what_it_assumed(tmp_path, caplog):
    official = ELLA.from_preset("sd15-t5xl")
    save_file(official.state_dict(), str(tmp_path / "ella-sd1.5-tsc-t5xl.safetensors"))  # no config metadata
    with caplog.at_level("WARNING"):
        assert main(["convert", str(tmp_path / "ella-sd1.5-tsc-t5xl.safetensors"), str(tmp_path / "folder")]) == 0
    assert "assuming heads=8" in caplog.text  # the release's value, named, never silently
    assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "back.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "back.safetensors"), str(tmp_path / "again")]) == 0
    assert _same_model(official, ELLA.from_pretrained(str(tmp_path / "again")))
    # a file to a file: a file (it used to become a folder named like one)
    assert main(["convert", str(tmp_path / "back.safetensors"), str(tmp_path / "copy.safetensors")]) == 0
    assert os.path.isfile(tmp_path / "copy.safetensors")
    assert _same_model(official, ELLA.from_single_file(str(tmp_path / "copy.safetensors")))


def test_convert_refuses_bad_weights_and_paths(tmp_path, capsys):
    model = ELLA.from_preset("tiny")
    state = model.state_dict()
    nan = {**state, "connector.latents": torch.full_like(state["connector.latents"], float("nan"))}
    save_file(nan, str(tmp_path / "nan.safetensors"))
    as_int = {**state, "connector.latents": state["connector.latents"].to(torch.int8)}
    save_file(as_int, str(tmp_path / "int8.safetensors"))
    model.save_single_file(str(tmp_path / "good.safetensors"))
    cases = [(["convert", str(tmp_path / "nan.safetensors"), str(tmp_path / "o")], "non-finite"),
             (["convert", str(tmp_path / "int8.safetensors"), str(tmp_path / "o")], "non-float"),
             (["convert", str(tmp_path / "good.safetensors"), str(tmp_path / "no" / "dir" / "x.safetensors")],
              "does not exist")]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "a cat", "--size", "0x32"], "size must be 1-8192"),
        (["generate", "a cat", "--size", "32x"], "size must be N or HxW"),
        (["generate", "a cat", "--steps", "0"], "argument --steps: must be at least 1"),
        (["generate", "a cat", "--num-images", "two"], "expected a whole number"),
        (["bench", "shapes", "--prompts", "0"], "argument --prompts: must be at least 1"),
        (["generate", "a cat", "--guidance", "nan"], "argument --guidance: must be a finite number"),
        (["bench", "shapes", "--guidance", "nan"], "argument --guidance: must be a finite number"),  # before any work
        (["bench", "dpg", "generate", "--out", "x", "--guidance", "inf"], "must be a finite number"),
    ],
)
def test_impossible_counts_and_sizes_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and one error line, exit code 2
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and message in err[-1]


def test_help_names_every_shipped_connector_and_bench_model(capsys, monkeypatch):
    """The help lists are built from the shipped-model catalog, the one list of them."""
    import re

    from ella.shapes.catalog import BENCH_MODELS as MODELS
    from ella.shapes.catalog import CONNECTORS

    monkeypatch.setenv("COLUMNS", "1000")  # no line wrapping, which may split a name at its hyphen
    for args, names in ((["generate", "--help"], CONNECTORS), (["bench", "shapes", "--help"], MODELS)):
        with pytest.raises(SystemExit):
            main(args)
        text = capsys.readouterr().out
        missing = [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]
        assert not missing, (args, missing)


def test_import_ella_and_help_stay_free_of_torch():
    """`import ella` and `ella --help` (with every plugin's commands) import no torch, diffusers or
    transformers: the names are lazy, the heavy imports happen where they are used."""
    import subprocess
    import sys

    code = ("import sys, ella; from ella.cli import build_parser; build_parser().format_help(); "
            "assert ella.__version__; print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_run = subprocess.run([sys.executable, "-m", "ella.cli", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "generate" in help_run.stdout and "shapes" in help_run.stdout


def test_lazy_names_resolve():
    import ella

    assert ella.ELLA.__name__ == "ELLA" and "ELLAStableDiffusionPipeline" in dir(ella)
    with pytest.raises(AttributeError):
        ella.NoSuchThing  # noqa: B018
