"""The published ELLA setting, in one place: hub ids, file names and inference defaults, each with
its public source. Torch-free (the CLI's help reads it).

Sources: Hu et al., "ELLA: Equip Diffusion Models with LLM for Enhanced Semantic Alignment",
arXiv:2403.05135 (2024); the ELLA repository, github.com/TencentQQGYLab/ELLA at commit 3c228f1:
`inference.py` (`build_demo` is the web demo that shows SD1.5 and ELLA side by side, `main` the
test script) and its README ("Download": the connector on the hub as QQGYLab/ELLA; the fp16 T5
note, issue #23).
"""

from __future__ import annotations

from dataclasses import dataclass

# Stable Diffusion 1.5: the maintained copy. runwayml's repository, which the ELLA repository and
# most tutorials name, was deleted from the hub in 2024.
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
FLAN_T5_XL = "google/flan-t5-xl"  # the encoder alone is used (T5EncoderModel), in fp16 as ELLA was trained
ELLA_REPO = "QQGYLab/ELLA"
ELLA_SD15_FILE = "ella-sd1.5-tsc-t5xl.safetensors"

# Hub repositories that hold single connector files and no `save_pretrained` folder: the file that
# `ELLA.from_pretrained(repo)` (and `--ella REPO`) loads.
SINGLE_FILE_REPOS = {ELLA_REPO: ELLA_SD15_FILE}

# Hub ids that no longer exist. The test suite fails if one is named anywhere else in the repository.
REMOVED_HUB_IDS = ("runwayml/stable-diffusion-v1-5", "runwayml/stable-diffusion-inpainting")


@dataclass(frozen=True)
class Defaults:
    """Inference defaults of a model family, with where they come from."""

    steps: int
    guidance: float
    size: int  # pixels a side
    scheduler: str  # a short name of `ella.samplers.SCHEDULERS`
    source: str


# One table of published defaults per model family.
FAMILY_DEFAULTS = {
    # The web demo's (inference.py `build_demo` at 3c228f1: its sliders start at guidance 10 and 25
    # steps; 512 px; DPMSolverMultistepScheduler from SD1.5's scheduler config). The test script
    # (`main`) uses guidance 12, 50 steps, seed 1001.
    "sd1.5": Defaults(steps=25, guidance=10.0, size=512, scheduler="dpm++",
                      source="TencentQQGYLab/ELLA@3c228f1 inference.py build_demo (the web demo)"),
    # No ELLA-SDXL weights or defaults were released: diffusers' StableDiffusionXLPipeline defaults.
    "sdxl": Defaults(steps=50, guidance=5.0, size=1024, scheduler="dpm++",
                     source="diffusers StableDiffusionXLPipeline defaults (no ELLA-SDXL release)"),
}


@dataclass(frozen=True)
class Preset:
    """A published model, as one name: the diffusion model, the connector, the LLM, the defaults."""

    model: str
    ella: str
    llm: str
    family: str  # a key of FAMILY_DEFAULTS

    @property
    def defaults(self) -> Defaults:
        return FAMILY_DEFAULTS[self.family]


PRESETS = {
    # ELLA-SD1.5 as released: SD1.5 + FLAN-T5-XL's encoder + the official TSC (66.8M parameters).
    "sd1.5-t5xl": Preset(model=SD15, ella=ELLA_REPO, llm=FLAN_T5_XL, family="sd1.5"),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]
