"""The frozen configuration of an ab initio run (saved as ``OUTDIR/config.yaml`` and in checkpoints)."""
import dataclasses

AMORTIZED_POSES = ("refined", "encoder")
"""Choices of :attr:`TrainConfig.amortized_poses`."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every choice of a ``cryoai abinit`` run.

    Sizes are in pixels of the *training* grid (after Fourier cropping to ``box``).
    """

    box: int
    """Training box in pixels (even)."""
    pixel_size_angstrom: float
    """Pixel size of the training grid, Å."""
    input_box: int
    """Box of the input particles (the exported map uses it)."""
    input_pixel_size_angstrom: float
    epochs: float | None = None
    """Passes over the data set; ``None`` with ``max_minutes`` set means: until the time budget is spent."""
    max_minutes: float | None = None
    """Wall-clock budget of the training loop, minutes."""
    batch_size: int = 128
    lr_encoder: float = 1e-3
    """Adam (amsgrad) learning rate of the pose encoder."""
    lr_decoder: float = 1e-3
    """Adam (amsgrad) learning rate of FourierNet."""
    grad_clip: float = 1.0
    """Gradient norm clipping (per network)."""
    symmetric_loss: bool = True
    """Symmetrized loss (paper eq. 10): min over the image and its 180° in-plane rotation."""
    mask_radius_angstrom: float | None = None
    """Real-space circular mask applied to the images; ``None``: 0.9 × half the box."""
    invert_contrast: bool = False
    """Multiply images by -1 (for dark particles on a bright background)."""
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    encoder_base_channels: int = 0
    """First-stage channels of the encoder; 0 picks by box (16 at ≤ 64 px, 32 above)."""
    decoder_width: int = 0
    """FourierNet hidden width; 0 picks by box (96 at ≤ 64 px, 256 above)."""
    bootstrap: bool = True
    """Start with a batch-wise global pose search that teaches the encoder (see ``train/learner.py``)."""
    search_rotations: int = 4096
    """Rotations in the global search grid (bootstrap, and the global checks of the refined amortized phase)."""
    search_max_shift_fraction: float = 0.15
    """Translations are searched within ± this fraction of the box per axis (the encoder's shift head reaches
    as far as the search, see :attr:`max_shift_px`)."""
    search_shift_points: int = 7
    """Points per axis of the coarse translation grid; the coarse stage runs at :attr:`coarse_radius_px`."""
    search_refine_steps: int = 3
    """Halvings of the local refinement (27 rotations x 9 translations around the current best)."""
    amortized_poses: str = "encoder"
    """Poses the amortized phase trains on: ``refined`` (the encoder's pose refined locally against the map, plus
    a global search every ``global_search_every`` steps; the encoder learns the result) or ``encoder`` (the
    paper: the encoder's poses end to end)."""
    local_rotation_degrees: float = 6.0
    """First rotation step of the local refinement around an encoder pose (then halved)."""
    local_shift_px: float = 1.0
    """First translation step of the local refinement around an encoder pose (then halved)."""
    global_search_every: int = 4
    """In the refined amortized phase, every n-th step also runs the global search; the lower residual wins."""
    bootstrap_agreement_degrees: float = 8.0
    """Leave the bootstrap phase when the encoder's median disagreement with the search drops below this."""
    bootstrap_max_fraction: float = 0.6
    """Leave the bootstrap phase at the latest after this fraction of the budget."""
    start_radius_px: float = 4.0
    """Fourier radius of the loss at the start of frequency marching (training pixels)."""
    marching_fraction: float = 0.5
    """Fraction of the budget over which the radius grows to Nyquist."""
    checkpoint_minutes: float = 5.0
    """Write ``checkpoint.pt`` at least this often."""
    first_checkpoint_steps: int = 100
    """The first checkpoint comes after this many steps of a session (or ``first_checkpoint_minutes``)."""
    first_checkpoint_minutes: float = 1.0
    """The first checkpoint comes after this many minutes of a session at the latest (at a safe point)."""
    log_every: int = 20
    """Steps between lines of ``metrics.csv``."""

    def __post_init__(self):
        if self.box < 16 or self.box % 2:
            raise ValueError(f"the training box must be even and at least 16 pixels, got {self.box}")
        if self.box > self.input_box:
            raise ValueError(f"the training box ({self.box}) cannot exceed the particle box ({self.input_box})")
        if self.epochs is None and self.max_minutes is None:
            raise ValueError("give --epochs, --max-minutes, or both")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"--epochs must be positive, got {self.epochs}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"--max-minutes must be positive, got {self.max_minutes}")
        if self.batch_size < 2:
            raise ValueError(f"--batch-size must be at least 2 (batch norm), got {self.batch_size}")
        for name in ("lr_encoder", "lr_decoder"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1), got {value}")
        if self.mask_radius_angstrom is not None and not self.mask_radius_angstrom > 0:
            raise ValueError(f"--mask-radius-angstrom must be positive, got {self.mask_radius_angstrom}")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be ≥ 0, got {self.num_workers}")
        if not 0 <= self.search_max_shift_fraction <= 0.5:
            raise ValueError(f"--search-max-shift-fraction must lie in [0, 0.5], got {self.search_max_shift_fraction}")
        if self.search_shift_points < 1 or self.search_refine_steps < 0 or self.global_search_every < 1:
            raise ValueError("search grid sizes and the global search rate must be positive")
        if self.amortized_poses not in AMORTIZED_POSES:
            raise ValueError(f"--amortized-poses must be one of {', '.join(AMORTIZED_POSES)}, "
                             f"got {self.amortized_poses!r}")
        if not 0 < self.marching_fraction <= 1 or not 0 <= self.bootstrap_max_fraction <= 1:
            raise ValueError("marching and bootstrap fractions must lie in (0, 1]")

    @property
    def encoder_channels(self) -> int:
        return self.encoder_base_channels or (16 if self.box <= 64 else 32)

    @property
    def fouriernet_width(self) -> int:
        return self.decoder_width or (96 if self.box <= 64 else 256)

    @property
    def nyquist_radius_px(self) -> float:
        return self.box / 2 - 1

    @property
    def shift_step_px(self) -> float:
        """Step of the coarse translation grid (training pixels); 0 when only the centre is searched."""
        if self.search_shift_points < 2:
            return 0.0
        return 2.0 * self.search_max_shift_fraction * self.box / (self.search_shift_points - 1)

    @property
    def max_shift_px(self) -> float:
        """Largest origin the search reaches per axis (grid extent + the refinement's steps) and the bound of
        the encoder's shift head, training pixels."""
        return self.search_max_shift_fraction * self.box + self.shift_step_px

    @property
    def coarse_radius_px(self) -> float:
        """Fourier radius of the coarse search: a half-step translation error costs at most a quarter turn of
        phase there, ``2π (r / L) (step / 2) ≤ π / 2``."""
        return self.nyquist_radius_px if self.shift_step_px == 0 else self.box / (2.0 * self.shift_step_px)
