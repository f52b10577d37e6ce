"""One typed training config: defaults here, overridden by a YAML file, then by `--key value`."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

import yaml

from ..paths import require_path
from ..published import SD15
from ..text_encoders import DEFAULT_LLM


@dataclass
class TrainConfig:
    # --- frozen models
    model: str = SD15  # diffusers folder/hub id with unet/ scheduler/ [vae/]; "tiny", "tiny-pixel", "tiny-sdxl" = random tiny parts
    llm: str = DEFAULT_LLM  # text encoder: folder, hub id, "minilm", or "tiny"
    text_max_length: int = 128  # the paper's T5 length
    text_mode: str = "fixed"  # fixed: padding attended (as the release); flexible: padding masked
    text_echo: bool = False  # causal LLMs: read each prompt twice, keep the second reading (sees the whole prompt)
    # --- the connector (the only trained part)
    connector: str = "sd15-t5xl"  # preset name (ella.PRESETS)
    connector_type: str = "tsc"  # tsc | adaln-zero | resampler | mlp (the paper's ablations)
    connector_overrides: dict = field(default_factory=dict)  # e.g. {layers: 2}
    init_connector: str | None = None  # fine-tune: start from these weights (export folder or .safetensors file)
    # SDXL UNets also take a pooled text embedding: from this CLIPTextModelWithProjection (a folder
    # with its tokenizer, or an SDXL folder: its text_encoder_2/ and tokenizer_2/), or else from a
    # small attention pool trained with the connector and saved with it (ELLA's pooled_dim).
    pooled_text_encoder: str | None = None
    # --- data
    train_data: str = ""  # image folder with .txt captions, .jsonl/.csv manifest, or shards "dir/*.tar"
    # Caption sets (`ella caption`) to train on, and how to mix them: {set folder: weight, "original": weight},
    # e.g. {runs/captions/dense: 0.95, original: 0.05} as DALL-E 3 mixed; each sample's choice is seeded by its key.
    captions: dict | None = None
    # The seed of each sample's draw from a `captions` mix (default: `seed`): fix it to give runs
    # of different seeds the same captions, and so one feature cache.
    captions_seed: int | None = None
    replay_data: str | None = None  # original data mixed into train_data (`ella feedback`'s fine-tuning rounds)
    replay_fraction: float = 0.5  # its share of each epoch
    resolution: int = 512  # resize shorter side, then center-crop
    caption_dropout: float = 0.1  # probability of the empty prompt, so CFG works at inference
    # Regularisers of the text side, so that the connector reads what a feature means rather than
    # which token it is (a word the LLM puts near a trained one then reads like it):
    text_noise: float = 0.0  # Gaussian noise on each real token's features, std = this x the caption's feature RMS
    token_dropout: float = 0.0  # probability that a real token is masked out (the rest of the caption must carry it)
    timestep_power: float = 1.0  # t = T * u**(1/p): 1 = uniform (standard); 2 = density rising with noise, where layout is decided
    timestep_logit_normal: list | None = None  # [mean, std]: t = T * sigmoid(N(mean, std)) instead (SD3's sampling)
    snr_gamma: float = 0.0  # > 0: min-SNR-gamma loss weighting (Hang et al. 2023; epsilon and v aware); 0 = plain MSE
    # diffusion: regress onto the images (the paper's); dpo: Diffusion-DPO (Wallace et al. 2023) on
    # (image, loser) pairs of a manifest, against a frozen copy of init_connector as the reference
    objective: str = "diffusion"
    dpo_beta: float = 2500.0  # DPO's KL strength (diffusers' diffusion_dpo example's default for SD1.5)
    cache_dir: str | None = None  # precomputed LLM features + latents (`ella cache`); read if present
    cache_dtype: str | None = None  # float16 halves the cache; None keeps the encoder's dtype
    num_workers: int = 0
    # --- optimisation (paper: AdamW, lr 1e-4, weight decay 0.01)
    max_steps: int = 10000
    batch_size: int = 32  # per process
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    lr_final_fraction: float = 1.0  # < 1: cosine decay to this fraction of lr at max_steps
    max_grad_norm: float = 1.0
    ema_decay: float = 0.9999  # 0 disables EMA
    # auto | no | fp16 | bf16: frozen models' compute in this dtype (autocast on a CPU), connector
    # weights in fp32. auto: bf16 where the device computes it natively (a CPU with AVX512-BF16 or
    # AMX, with the UNet's attention kept in fp32: 1.68x on ShapesWorld's step, benchmarks/train_fast_path.py),
    # else fp16 on a GPU, fp32 on a CPU.
    mixed_precision: str = "auto"
    seed: int = 0
    # --- outputs
    output_dir: str = "runs/ella"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 50
    validate_every: int = 1000  # 0 disables validation images
    validation_prompts: list = field(default_factory=lambda: ["a red apple on a wooden table"])
    validation_steps: int = 25
    validation_guidance: float = 7.5
    tensorboard: bool = False
    log_data_order: bool = False  # per process: the sample ids trained on and the final weights' digest
    resume: bool = False  # continue from the latest checkpoint in output_dir

    @property
    def caption_draw_seed(self) -> int:
        """What draws each sample's caption from the `captions` mix: `captions_seed`, else `seed`."""
        return self.seed if self.captions_seed is None else self.captions_seed

    def validate(self) -> "TrainConfig":
        if self.text_mode not in ("fixed", "flexible"):
            raise ValueError(f"text_mode must be fixed or flexible, got {self.text_mode!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.captions is not None:
            from .captions import check_mix

            check_mix(self.captions)
        for name in ("max_steps", "batch_size", "grad_accum", "resolution", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.timestep_power <= 0:
            raise ValueError("timestep_power must be positive (1 = uniform timesteps)")
        if self.timestep_logit_normal is not None:
            if len(self.timestep_logit_normal) != 2 or not float(self.timestep_logit_normal[1]) > 0:
                raise ValueError("timestep_logit_normal must be [mean, std] with std > 0, e.g. [0.0, 1.0]")
            if self.timestep_power != 1.0:
                raise ValueError("set timestep_power or timestep_logit_normal, not both")
        if self.snr_gamma < 0:
            raise ValueError("snr_gamma must be positive (5 is the paper's), or 0 for plain MSE")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError("caption_dropout must be in [0, 1)")
        if self.text_noise < 0:
            raise ValueError(f"text_noise must be at least 0, got {self.text_noise}")
        if not 0 <= self.token_dropout < 1:
            raise ValueError(f"token_dropout must be in [0, 1), got {self.token_dropout}")
        if not self.train_data and not self.cache_dir:
            raise ValueError("set train_data (or cache_dir to a built feature cache)")
        if self.objective not in ("diffusion", "dpo"):
            raise ValueError(f"objective must be diffusion or dpo, got {self.objective!r}")
        if self.objective == "dpo":
            check_dpo(self)
        check_schedule(self)
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def check_dpo(config: TrainConfig) -> None:
    """DPO trains on pairs of a manifest (`image`, `loser`, `caption` per record) from a reference."""
    if not config.dpo_beta > 0:
        raise ValueError(f"dpo_beta must be positive, got {config.dpo_beta}")
    if not config.init_connector:
        raise ValueError("objective dpo needs init_connector: its frozen copy is the reference")
    if not config.train_data.endswith((".jsonl", ".csv")) or config.cache_dir or config.replay_data or config.captions:
        raise ValueError("objective dpo trains on a .jsonl/.csv manifest of pairs (image, loser, caption) only:"
                         " no cache_dir, replay_data or caption sets")
    if config.caption_dropout:
        raise ValueError("objective dpo compares two images of one caption: set caption_dropout to 0")


def check_schedule(config) -> None:
    """The optimiser fields every training config shares (connectors, the ShapesWorld base)."""
    if not config.lr > 0:  # also refuses NaN
        raise ValueError(f"lr must be positive, got {config.lr}")
    if config.warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {config.warmup_steps}")
    if not 0 <= config.lr_final_fraction <= 1:
        raise ValueError(f"lr_final_fraction must be in [0, 1], got {config.lr_final_fraction}")
    if not 0 <= config.ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA), got {config.ema_decay}")


def _convert(name: str, value: str, annotation) -> object:
    """Turn a command-line string into the field's type (YAML syntax for lists and dicts)."""
    text = str(annotation)
    parsed = yaml.safe_load(value)
    if text.split(" |")[0] == "int" and isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        return int(parsed)
    if text == "int | None" and parsed is None:
        return None
    if text == "float":
        try:  # YAML reads "5e-4" (no decimal point) as a string; Python's float does not
            return float(value)
        except ValueError:
            pass
    if text == "bool" and isinstance(parsed, bool):
        return parsed
    if text == "str" or text.startswith("str |"):
        return None if parsed is None and "None" in text else str(value)
    if text.split(" |")[0] in ("list", "dict") and (isinstance(parsed, (list, dict)) or
                                                    (parsed is None and "None" in text)):
        return parsed
    raise ValueError(f"--{name.replace('_', '-')}: cannot read {value!r} as {text}")


def parse_overrides(args: list[str]) -> dict:
    """["--max-steps", "3", "--resume"] -> {"max_steps": "3", "resume": "true"}."""
    out, i = {}, 0
    while i < len(args):
        key = args[i]
        if not key.startswith("--"):
            raise ValueError(f"expected --key value, got {key!r}")
        name = key[2:].replace("-", "_")
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[name], i = args[i + 1], i + 2
        else:
            out[name], i = "true", i + 1  # a bare flag
    return out


def load_config(path: str | None = None, overrides: dict | None = None, cls: type = TrainConfig):
    """Defaults <- YAML file <- overrides (strings from the command line, or typed values).
    `cls` is any config dataclass with a `validate()` method."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict = {}
    if path is not None:
        require_path(path, "config file")
        with open(path) as f:
            try:
                values = yaml.safe_load(f) or {}
            except yaml.YAMLError as err:
                raise ValueError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config file must be a mapping of field: value")
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ValueError(f"unknown config field {key!r}")
        values[key] = _convert(key, value, _annotation_name(hints[key])) if isinstance(value, str) else value
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown config field(s) in {path}: {', '.join(sorted(unknown))}")
    for key, value in values.items():
        check_type(key, value, _annotation_name(hints[key]))
    return cls(**values).validate()


_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str, "list": list, "dict": dict}


def check_type(name: str, value, annotation: str) -> None:
    """A YAML value of the field's type (`max_steps: 2.5`, `lr: fast` or a string where a list
    belongs are refused before anything loads; an integral float such as 1e3 is a whole number)."""
    optional = annotation.endswith("| None")
    expected = _TYPES.get(annotation.split(" |")[0])
    if expected is None or (optional and value is None):
        return
    if expected is int and isinstance(value, float) and value.is_integer():
        return
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ValueError(f"config field {name}: expected {annotation}, got {value!r}")


def _annotation_name(hint) -> str:
    if hint in (int, float, bool, str, list, dict):
        return hint.__name__
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return f"{args[0].__name__} | None" if args else str(hint)
