import os

import pytest
import torch

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Nothing in the default suite may reach a model hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.manual_seed(0)


@pytest.fixture
def tiny_pipe():
    from ella import ELLAStableDiffusionPipeline
    from ella.testing import tiny_components

    pipe = ELLAStableDiffusionPipeline(**tiny_components(with_clip=True), text_mode="flexible")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def shipped_pipeline():
    """The shipped ShapesWorld pipelines, loaded once per connector for the whole session:
    `shipped_pipeline("tsc")`. Tests must not change them (scheduler, components)."""
    import functools

    from ella.shapes.models import load_shapes_pipeline

    return functools.cache(lambda connector="tsc": load_shapes_pipeline(connector=connector))
