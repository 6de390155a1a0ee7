"""TrainConfig: how one member is trained (every train_all.py flag is one field). No PyTorch import, so the CLI's
``--help`` is instant; the trainer is :mod:`zoo.train`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

PRECISIONS = ("auto", "no", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("step", "cosine")


@dataclass
class TrainConfig:
    """How one member is trained. Defaults are the seed project's recipe."""

    backbone: str = "regnet_x_800mf"
    epochs: int = 20
    img_size: int = 512
    batch_size: int = 16
    recipe: str = "seed"  # the preset these values came from (zoo.recipes); flags override it
    optimizer: str = "adam"  # adam | adamw
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "step"  # step (StepLR per epoch) | cosine (linear warm-up, then cosine decay, per step)
    step_size: int = 5
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # with --scheduler cosine
    ema_decay: float = 0.0  # weight EMA (timm ModelEmaV3), validated and exported when > 0
    patience: int = 0  # early stopping after this many epochs without a better val AUC; 0 = off
    val_fraction: float = 0.2  # of the labelled studies left after the calibration split
    # share of labelled studies held out of training and of every selection step, to certify the triage
    # (zoo.calibration.calibration_split); None: 0.2 when that is >= 150 studies, else 0; 0: off
    calibration_fraction: float | None = None
    seed: int = 0
    pretrained: bool = False
    pretrained_weights: str | None = None  # a .safetensors file, or a folder of <backbone>.safetensors files
    rotation: float = 30.0
    hflip: bool = True
    translate: float = 0.1
    crop_scale: float = 1.0  # random resized crop: minimum area fraction (1.0 = off)
    brightness: float = 0.0  # random brightness factor in [1 - b, 1 + b]
    contrast: float = 0.0  # random contrast factor in [1 - c, 1 + c]
    gamma_jitter: float = 0.0  # random gamma in [1 - g, 1 + g]
    label_smoothing: float = 0.0  # targets y(1 - e) + e/2
    mixup: float = 0.0  # mixup Beta(a, a) parameter (0 = off)
    folds: int = 1  # k-fold cross-validation over labelled studies (1 = one validation split of val_fraction)
    fold: int = 0  # which fold this member validates on (0 .. folds-1)
    head_hidden: list[int] = field(default_factory=lambda: [1024, 512])
    dropout: float = 0.3
    pos_weight: float | None = None  # None: n_neg / n_pos of the training split
    mean: float = 0.449
    std: float = 0.226
    mixed_precision: str = "auto"  # auto = bf16 where native (GPU, AVX512-BF16/AMX CPU); no | bf16 | fp16 (scaled)
    grad_accum: int = 1  # optimizer step every N batches (effective batch = batch_size x N x processes)
    micro_batch: int = 0  # forward/backward in chunks of this many images (0 = auto: 8 on CPU, the batch on GPU)
    compile: bool = False  # torch.compile the model
    device: str = "auto"
    workers: int = -1  # DataLoader workers; -1 = auto (0 on CPU, up to 8 on CUDA)
    cache_dir: str | None = None  # decoded-image cache; None = ~/.cache/bone-zoo/images, "" = in memory
    cache_max_gb: float | None = None  # its bound on disk (LRU eviction); None = BONE_ZOO_CACHE_MAX_GB or 20
    quiet: bool = False
    export: bool = True  # ONNX graphs (fp32 + int8, checked on validation) beside the finished member (zoo.onnx)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


# how it ran, not what was trained: not in config.json
RUNTIME_FIELDS = ("device", "workers", "cache_dir", "cache_max_gb", "quiet", "export")
