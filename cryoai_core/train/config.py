"""The frozen configuration of an ab initio run: the one source of every setting, default and tuning constant.

A :class:`TrainConfig` holds the run's geometry and method choices and one frozen group per part of the
method: :class:`EncoderConfig`, :class:`FourierNetConfig`, :class:`SearchConfig`, :class:`BootstrapConfig`,
:class:`ScheduleConfig`, :class:`OptimizerConfig`, :class:`MaskConfig` and :class:`HalfMapConfig`. It is
saved whole (nested) as ``OUTDIR/config.yaml`` and in checkpoints.

Each field that a user may set carries its help text in its metadata (for a boolean that defaults to true,
the help says what its ``--no-`` option does); :mod:`cryoai_core.train.config_flags`
turns them into the options of ``cryoai abinit`` (the option of a group's field is ``--<prefix>-<field>``,
e.g. ``--search-rotations``) and the Scipion form takes its defaults and checks from there. This module
imports no torch, so that the plugin can use it in Scipion's process.
"""
import dataclasses

MIN_BOX = 16
"""Smallest training box, pixels (the encoder halves the image down to 4 pixels)."""
DEFAULT_MAX_BOX = 64
"""Without ``--box``, particles larger than this are Fourier-cropped to it for training."""
DEFAULT_MAX_MINUTES = 30.0
"""Time budget of a run given neither ``--epochs`` nor ``--max-minutes``."""
FORM_EPOCHS = 20
"""Epoch budget the Scipion form proposes: a budget in epochs gives the same result on every machine."""
MIN_MASK_RADIUS_PX = 4.0
"""A mask radius below this (training pixels) leaves too little of the particle to reconstruct."""
AMORTIZED_POSES = ("refined", "encoder")
"""Choices of :attr:`TrainConfig.amortized_poses`."""


def setting(default=dataclasses.MISSING, help: str = "", *, factory=None, choices=None, flag: bool = True):
    """A dataclass field with its user-facing help (``flag=False``: not a command-line option; no default and
    no factory: a required field)."""
    metadata = {"help": help, "choices": choices, "flag": flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the pose encoder (CNN on a Gaussian filter bank, 6D rotation and shift heads)."""

    PREFIX = "encoder"
    base_channels: int = setting(0, "channels of the encoder's first stage; 0 picks by box (16 at ≤ 64 px, 32 above)")
    max_channels: int = setting(256, "channels of the encoder's stages are doubled up to this")
    hidden_features: int = setting(256, "width of the encoder's fully connected layers")
    filter_sigmas_px: tuple = setting(help="standard deviations (px) of the encoder's Gaussian low-pass bank; "
                                           "0 is the unfiltered image", factory=lambda: (0.0, 1.0, 2.0, 4.0))

    def __post_init__(self):
        _require(self.base_channels >= 0, f"--encoder-base-channels must be ≥ 0, got {self.base_channels}")
        _require(self.max_channels >= 1 and self.hidden_features >= 1,
                 "--encoder-max-channels and --encoder-hidden-features must be positive")
        _require(len(self.filter_sigmas_px) >= 1 and all(s >= 0 for s in self.filter_sigmas_px),
                 f"--encoder-filter-sigmas-px must be ≥ 0, got {self.filter_sigmas_px}")
        object.__setattr__(self, "filter_sigmas_px", tuple(float(s) for s in self.filter_sigmas_px))

    def channels(self, box: int) -> int:
        """First-stage channels for a training box."""
        return self.base_channels or (16 if box <= 64 else 32)


@dataclasses.dataclass(frozen=True)
class FourierNetConfig:
    """FourierNet: two SIRENs (envelope and modulant) on 3D Fourier coordinates."""

    PREFIX = "fouriernet"
    width: int = setting(0, "hidden width of FourierNet; 0 picks by box (96 at ≤ 64 px, 256 above)")
    modulant_layers: int = setting(3, "hidden layers of FourierNet's modulant SIREN")
    envelope_layers: int = setting(2, "hidden layers of FourierNet's envelope SIREN")
    modulant_omega_0: float = setting(40.0, "frequency factor of the modulant SIREN's first layer")
    envelope_omega_0: float = setting(30.0, "frequency factor of the envelope SIREN's first layer")

    def __post_init__(self):
        _require(self.width >= 0, f"--fouriernet-width must be ≥ 0, got {self.width}")
        _require(self.modulant_layers >= 1 and self.envelope_layers >= 1, "FourierNet needs at least one layer")
        _require(self.modulant_omega_0 > 0 and self.envelope_omega_0 > 0, "SIREN frequency factors must be positive")

    def hidden_features(self, box: int) -> int:
        """Hidden width for a training box."""
        return self.width or (96 if box <= 64 else 256)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The pose search against FourierNet cached on a Fourier grid (bootstrap, refined amortized phase)."""

    PREFIX = "search"
    rotations: int = setting(4096, "rotations of the global search grid")
    max_shift_fraction: float = setting(0.15, "particles are searched up to this fraction of the box off "
                                              "centre, per axis (the encoder's shift head reaches as far)")
    shift_points: int = setting(7, "points per axis of the coarse translation grid")
    centre_particles: bool = setting(True, "search the particles' origins about the box centre (by default every "
                                           "image is first moved by the particles' mean origin, the point about "
                                           "which their average image is symmetric, so that the translation grid, "
                                           "the encoder's shift bound and the mask sit on the particles; the "
                                           "exported origins add it back)")
    refine_steps: int = setting(3, "halvings of the local refinement (27 rotations x 9 translations around the best)")
    candidates: int = setting(16, "poses of the global grid's coarse stage per image screened on the full disk "
                                  "(each at its translation and the 8 around it) in training")
    finalists: int = setting(1, "the screening's closest poses per image refined in training: each takes a round "
                                "of local refinement, then the closer half goes on until one is left")
    refine_candidates: int = setting(64, "refining poses after training (abinit's export, predict-poses --refine), "
                                         "--search-candidates of the global search")
    refine_finalists: int = setting(8, "refining poses after training, --search-finalists of the global search "
                                       "(benchmarks/oracle_search.py: at 64 px and SNR 0.05, 64 candidates and "
                                       "8 finalists find 75 % of poses within 20° against the right map, 16 and "
                                       "1 57 %)")
    local_rotation_degrees: float = setting(6.0, "first rotation step of the local refinement around an "
                                                 "encoder pose, degrees (then halved)")
    local_shift_px: float = setting(1.0, "first translation step of the local refinement around an encoder "
                                         "pose, training pixels (then halved)")
    refine_tie_fraction: float = setting(0.2, "refining poses after training, the local refinement of the "
                                              "encoder's pose and the global search's best both take every round "
                                              "when their distances after the first differ by less than this "
                                              "fraction of the power the closer one explains; otherwise only the "
                                              "closer one goes on (1: always both)")
    refine_edge_px: float = setting(2.0, "refining poses after training, a round whose rotation step moves the "
                                         "Fourier disk's edge by more than this many pixels picks its best "
                                         "candidate on the smaller disk where the step moves points this far "
                                         "(0: always the full disk)")
    global_every: int = setting(4, "in the refined amortized phase, every n-th step also runs the global search")
    keep_best: bool = setting(True, "forget each particle's best pose between its visits (by default it is kept, "
                                    "re-scored against the current map at the next visit and competes with the "
                                    "encoder's proposal and the global search)")
    grid_refresh_steps: int = setting(10, "steps between refreshes of the cached FourierNet grid")
    grid_oversampling: int = setting(2, "oversampling of the cached FourierNet grid")

    def __post_init__(self):
        _require(self.rotations >= 1, f"--search-rotations must be positive, got {self.rotations}")
        _require(0 <= self.max_shift_fraction <= 0.5,
                 f"--search-max-shift-fraction must lie in [0, 0.5], got {self.max_shift_fraction}")
        _require(self.shift_points >= 1 and self.refine_steps >= 0 and self.global_every >= 1 and self.candidates >= 1
                 and self.finalists >= 1 and self.refine_candidates >= 1 and self.refine_finalists >= 1
                 and self.grid_refresh_steps >= 1 and self.grid_oversampling >= 1,
                 "search grid sizes, steps and rates must be positive")
        _require(self.local_rotation_degrees >= 0 and self.local_shift_px >= 0 and self.refine_edge_px >= 0
                 and self.refine_tie_fraction >= 0,
                 "local refinement steps, --search-refine-edge-px and --search-refine-tie-fraction must be ≥ 0")


@dataclasses.dataclass(frozen=True)
class BootstrapConfig:
    """The bootstrap phase: a batch-wise global search teaches the encoder (see ``train/learner.py``)."""

    PREFIX = "bootstrap"
    enabled: bool = setting(True, "skip the pose-search bootstrap: pure amortized training from the start "
                                  "(the paper's procedure)")
    agreement_degrees: float = setting(8.0, "leave the bootstrap when the encoder's median disagreement with "
                                            "the search falls below this, degrees")
    max_fraction: float = setting(0.6, "leave the bootstrap at the latest after this fraction of the budget")
    agreement_momentum: float = setting(0.9, "momentum of the running median disagreement")
    shift_loss_weight: float = setting(0.05, "weight of the encoder's squared shift error (px²) against its "
                                             "squared Frobenius error")
    quarter_turns: bool = setting(True, "teach the encoder on the images as they are only (by default each image "
                                        "is turned by a random multiple of 90° in plane, with its pose turned "
                                        "alike: exact, four times the views)")
    exit_radius_px: float = setting(8.0, "the early exit waits until the loss radius reaches this (capped "
                                         "at the training box's Nyquist radius)")

    def __post_init__(self):
        _require(0 <= self.max_fraction <= 1, f"--bootstrap-max-fraction must lie in [0, 1], got {self.max_fraction}")
        _require(self.agreement_degrees >= 0, "--bootstrap-agreement-degrees must be ≥ 0")
        _require(0 <= self.agreement_momentum < 1, "--bootstrap-agreement-momentum must lie in [0, 1)")
        _require(self.shift_loss_weight >= 0 and self.exit_radius_px >= 0,
                 "--bootstrap-shift-loss-weight and --bootstrap-exit-radius-px must be ≥ 0")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Budget, batches, coarse-to-fine frequency marching and bookkeeping."""

    PREFIX = ""
    epochs: float | None = setting(None, "passes over the data set")
    max_minutes: float | None = setting(None, "time budget of the training, minutes (default "
                                              f"{DEFAULT_MAX_MINUTES:g} when --epochs is absent)")
    batch_size: int = setting(128, "images per step")
    start_radius_px: float = setting(4.0, "Fourier radius of the loss at the start of frequency marching, "
                                          "training pixels")
    marching_fraction: float = setting(0.5, "fraction of the budget over which the loss radius grows to Nyquist")
    checkpoint_minutes: float = setting(5.0, "minutes between checkpoints")
    first_checkpoint_steps: int = setting(100, "the first checkpoint of a session comes after this many steps "
                                               "(or --first-checkpoint-minutes)")
    first_checkpoint_minutes: float = setting(1.0, "the first checkpoint of a session comes after this many "
                                                   "minutes at the latest (at a safe point)")
    log_every: int = setting(20, "steps between rows of metrics.csv")

    def __post_init__(self):
        _require(self.epochs is not None or self.max_minutes is not None, "give --epochs, --max-minutes, or both")
        _require(self.epochs is None or self.epochs > 0, f"--epochs must be positive, got {self.epochs}")
        _require(self.max_minutes is None or self.max_minutes > 0,
                 f"--max-minutes must be positive, got {self.max_minutes}")
        _require(self.batch_size >= 2, f"--batch-size must be at least 2 (batch norm), got {self.batch_size}")
        _require(0 < self.marching_fraction <= 1,
                 f"--marching-fraction must lie in (0, 1], got {self.marching_fraction}")
        _require(self.start_radius_px > 0, f"--start-radius-px must be positive, got {self.start_radius_px}")
        _require(self.checkpoint_minutes > 0, f"--checkpoint-minutes must be positive, got {self.checkpoint_minutes}")
        _require(self.first_checkpoint_steps >= 1 and self.first_checkpoint_minutes > 0,
                 "--first-checkpoint-steps and --first-checkpoint-minutes must be positive")
        _require(self.log_every >= 1, f"--log-every must be at least 1, got {self.log_every}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Adam (amsgrad) on each network, with gradient-norm clipping."""

    PREFIX = ""
    lr_encoder: float = setting(1e-3, "learning rate of the pose encoder")
    lr_decoder: float = setting(1e-3, "learning rate of FourierNet")
    grad_clip: float = setting(1.0, "gradient norm clipping, per network")

    def __post_init__(self):
        for name in ("lr_encoder", "lr_decoder"):
            value = getattr(self, name)
            _require(0 < value < 1, f"--{name.replace('_', '-')} must be in (0, 1), got {value}")
        _require(self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}")


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """The soft circular mask applied to the particle images."""

    PREFIX = "mask"
    radius_angstrom: float | None = setting(None, "radius of the circular mask applied to the particles, Å "
                                                  "(default: --mask-default-fraction of half the box)")
    default_fraction: float = setting(0.9, "mask radius, as a fraction of half the box, when no radius is given")
    edge_width_px: float = setting(2.0, "width of the mask's cosine edge, training pixels")

    def __post_init__(self):
        _require(self.radius_angstrom is None or self.radius_angstrom > 0,
                 f"--mask-radius-angstrom must be positive, got {self.radius_angstrom}")
        _require(0 < self.default_fraction <= 1.5, "--mask-default-fraction must lie in (0, 1.5]")
        _require(self.edge_width_px > 0, "--mask-edge-width-px must be positive")


@dataclasses.dataclass(frozen=True)
class HalfMapConfig:
    """Half maps after training (``cryoai_core/reconstruct.py``) and their gold-standard refinement, each
    half's poses refined against that half's own map (``cryoai_core/gold_standard.py``)."""

    PREFIX = "half_maps"
    rounds: int = setting(3, "rounds of gold-standard refinement: each half's rotations refined locally against its "
                             "own map; 0 backprojects the predicted poses as they are, whose half-map FSC is "
                             "optimistic (noise aligned alike in both halves)")
    start_fraction: float = setting(0.25, "the first round compares images with their half map up to at most this "
                                          "fraction of Nyquist")
    start_fsc: float = setting(0.5, "the first round compares images with their half map only up to where the "
                                    "FSC of the half maps of the predicted poses falls below this")
    fsc_threshold: float = setting(0.143, "FSC between independent half maps that defines the gold-standard "
                                          "resolution")
    randomize_fsc: float = setting(0.8, "noise substitution: the half maps' phases are randomised beyond the first "
                                        "shell whose FSC falls below this, and the FSC the real-space steps of the "
                                        "reconstruction give them there is taken out (Chen et al. 2013)")
    established_ratio: float = setting(1.5, "the resolution is marked 'not established' when the noise substitution "
                                            "moves the half-map FSC's crossing by more than this factor: the halves "
                                            "then agree mostly through low-resolution content spread over the box "
                                            "(noise aligned alike), not through the structure")
    padding: int = setting(2, "fineness of the 3D Fourier grid of the backprojection relative to the images' "
                              "(2 keeps trilinear insertion errors small)")
    tau_floor: float = setting(1e-3, "smallest Wiener constant, as a fraction of a shell's mean weight (keeps empty "
                                     "or rare voxels finite)")
    fsc_floor: float = setting(1e-3, "half-map FSC below which a shell counts as noise when measuring the Wiener "
                                     "constant (τ is then W̄ / fsc_floor)")

    def __post_init__(self):
        _require(self.rounds >= 0, f"--half-maps-rounds must be ≥ 0, got {self.rounds}")
        _require(0 < self.start_fraction <= 1,
                 f"--half-maps-start-fraction must lie in (0, 1], got {self.start_fraction}")
        _require(0 < self.start_fsc < 1, f"--half-maps-start-fsc must lie in (0, 1), got {self.start_fsc}")
        _require(0 < self.randomize_fsc < 1,
                 f"--half-maps-randomize-fsc must lie in (0, 1), got {self.randomize_fsc}")
        _require(self.established_ratio > 1,
                 f"--half-maps-established-ratio must be above 1, got {self.established_ratio}")
        _require(0 < self.fsc_threshold < 1 and 0 < self.fsc_floor < 1 and self.tau_floor > 0 and self.padding >= 1,
                 "half-map FSC thresholds must lie in (0, 1), the Wiener floor be positive and the padding ≥ 1")


GROUPS = {"encoder": EncoderConfig, "fouriernet": FourierNetConfig, "search": SearchConfig,
          "bootstrap": BootstrapConfig, "schedule": ScheduleConfig, "optimizer": OptimizerConfig,
          "mask": MaskConfig, "half_maps": HalfMapConfig}
"""The groups of a :class:`TrainConfig`, by attribute name."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every choice of a ``cryoai abinit`` run. Sizes are in pixels of the *training* grid (after Fourier
    cropping to ``box``)."""

    box: int = setting(help="training box in pixels (even)", flag=False)
    pixel_size_angstrom: float = setting(help="pixel size of the training grid, Å", flag=False)
    input_box: int = setting(help="box of the input particles (the exported map uses it)", flag=False)
    input_pixel_size_angstrom: float = setting(help="pixel size of the input particles, Å", flag=False)
    schedule: ScheduleConfig = setting(factory=lambda: ScheduleConfig(max_minutes=DEFAULT_MAX_MINUTES))
    symmetric_loss: bool = setting(True, "plain L2 loss instead of the symmetrized loss, which keeps the better of "
                                         "the image and its 180° in-plane rotation (paper eq. 10)")
    amortized_poses: str = setting("refined", "poses of the amortized phase: 'refined' (the encoder's pose "
                                              "refined against the map, with a global search every few steps; "
                                              "benchmarks/ablation_refine.py) or 'encoder' (the paper)",
                                   choices=AMORTIZED_POSES)
    invert_contrast: bool = setting(False, "invert the images (use when particles are dark on a bright background)")
    junk_weighting: float = setting(0.5, "down-weight, in the map's loss of the search-driven phases, images that "
                                         "the map explains less than this fraction as well as the batch's median "
                                         "image (pure-noise junk; train/score.py); 0 turns it off")
    seed: int = setting(0, "random seed")
    device: str = setting("cpu", "torch device", flag=False)
    num_workers: int = setting(0, "image-reading processes")
    encoder: EncoderConfig = setting(factory=EncoderConfig)
    fouriernet: FourierNetConfig = setting(factory=FourierNetConfig)
    search: SearchConfig = setting(factory=SearchConfig)
    bootstrap: BootstrapConfig = setting(factory=BootstrapConfig)
    optimizer: OptimizerConfig = setting(factory=OptimizerConfig)
    mask: MaskConfig = setting(factory=MaskConfig)
    half_maps: HalfMapConfig = setting(factory=HalfMapConfig)

    def __post_init__(self):
        _require(self.box >= MIN_BOX and self.box % 2 == 0,
                 f"the training box must be even and at least {MIN_BOX} pixels, got {self.box}")
        _require(self.box <= self.input_box,
                 f"the training box ({self.box}) cannot exceed the particle box ({self.input_box})")
        _require(self.num_workers >= 0, f"--num-workers must be ≥ 0, got {self.num_workers}")
        _require(0 <= self.junk_weighting <= 1, f"--junk-weighting must lie in [0, 1], got {self.junk_weighting}")
        _require(0 <= self.seed < 2 ** 31, f"--seed must lie in [0, 2^31), got {self.seed}")
        _require(self.amortized_poses in AMORTIZED_POSES,
                 f"--amortized-poses must be one of {', '.join(AMORTIZED_POSES)}, got {self.amortized_poses!r}")
        for name, group in GROUPS.items():
            _require(isinstance(getattr(self, name), group), f"{name} must be a {group.__name__}")
        if self.mask.radius_angstrom is not None:
            _require(self.mask_radius_px >= MIN_MASK_RADIUS_PX,
                     f"--mask-radius-angstrom {self.mask.radius_angstrom:g} is {self.mask_radius_px:.2f} pixels of "
                     f"{self.pixel_size_angstrom:.3g} Å on the training grid; the mask must be at least "
                     f"{MIN_MASK_RADIUS_PX:g} pixels ({MIN_MASK_RADIUS_PX * self.pixel_size_angstrom:.3g} Å)")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The config written by :func:`dataclasses.asdict` (``config.yaml``, checkpoints), read back."""
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown settings {', '.join(sorted(unknown))}")
        values = dict(values)
        for name, group in GROUPS.items():
            if name in values:
                part = values[name]
                if not isinstance(part, dict) or set(part) - {f.name for f in dataclasses.fields(group)}:
                    raise ValueError(f"the settings of {name} do not match this version")
                values[name] = group(**part)
        return cls(**values)

    @property
    def nyquist_radius_px(self) -> float:
        """Largest loss radius, training pixels (one inside the box's Nyquist)."""
        return self.box / 2 - 1

    @property
    def bootstrap_exit_radius_px(self) -> float:
        """Loss radius from which the bootstrap may end early: the setting, capped at Nyquist."""
        return min(self.bootstrap.exit_radius_px, self.nyquist_radius_px)

    @property
    def mask_radius_px(self) -> float:
        """Radius of the image mask, training pixels."""
        if self.mask.radius_angstrom is not None:
            return self.mask.radius_angstrom / self.pixel_size_angstrom
        return self.mask.default_fraction * self.box / 2

    @property
    def shift_step_px(self) -> float:
        """Step of the coarse translation grid (training pixels); 0 when only the centre is searched."""
        if self.search.shift_points < 2:
            return 0.0
        return 2.0 * self.search.max_shift_fraction * self.box / (self.search.shift_points - 1)

    @property
    def max_shift_px(self) -> float:
        """Largest origin the search reaches per axis (grid extent + the refinement's steps) and the bound of
        the encoder's shift head, training pixels."""
        return self.search.max_shift_fraction * self.box + self.shift_step_px

    @property
    def coarse_radius_px(self) -> float:
        """Fourier radius of the coarse search: a half-step translation error costs at most a quarter turn of
        phase there, ``2π (r / L) (step / 2) ≤ π / 2``."""
        return self.nyquist_radius_px if self.shift_step_px == 0 else self.box / (2.0 * self.shift_step_px)


def replace(config: TrainConfig, **changes) -> TrainConfig:
    """A copy of ``config`` with settings changed by flat name (``epochs``, ``search_rotations``, ``device``)."""
    groups = {}
    top = {}
    for name, value in changes.items():
        group, field = locate(name)
        if group is None:
            top[field] = value
        else:
            groups.setdefault(group, {})[field] = value
    for group, values in groups.items():
        top[group] = dataclasses.replace(getattr(config, group), **values)
    return dataclasses.replace(config, **top)


def locate(name: str) -> tuple:
    """``(group attribute or None, field)`` of a flat setting name (an option's name with underscores)."""
    table = flat_names()
    if name not in table:
        raise ValueError(f"unknown setting {name!r}")
    return table[name]


def flat_names() -> dict:
    """Flat setting name -> ``(group attribute or None, field)`` for every field of a :class:`TrainConfig`.

    A group's field is named ``<prefix>_<field>`` (the group's ``PREFIX``; ``enabled`` is the prefix alone);
    the fields of the schedule and the optimizer, and the top-level ones, keep their own name.
    """
    table = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name in GROUPS:
            group = GROUPS[field.name]
            for inner in dataclasses.fields(group):
                if inner.name == "enabled":
                    flat = group.PREFIX
                else:
                    flat = f"{group.PREFIX}_{inner.name}" if group.PREFIX else inner.name
                table[flat] = (field.name, inner.name)
        else:
            table[field.name] = (None, field.name)
    return table


def build(**values) -> TrainConfig:
    """A :class:`TrainConfig` from flat setting names (see :func:`flat_names`); others keep their default."""
    top, groups = {}, {}
    for name, value in values.items():
        group, field = locate(name)
        if group is None:
            top[field] = value
        else:
            groups.setdefault(group, {})[field] = value
    for group, part in groups.items():
        top[group] = GROUPS[group](**part)
    return TrainConfig(**top)
