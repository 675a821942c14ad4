"""The one source of configuration: nested frozen configs, the options generated from them, config.yaml."""
import argparse
import dataclasses
import os
import subprocess
import sys

import pytest
import yaml

from cryoai_core.cli.abinit import add_args
from cryoai_core.provenance import save_config
from cryoai_core.train import config_flags
from cryoai_core.train.config import GROUPS, TrainConfig, build, flat_names, replace

LEGACY_OPTIONS = ["--epochs", "2", "--max-minutes", "3", "--batch-size", "16", "--lr-encoder", "0.002",
                  "--lr-decoder", "0.003", "--no-symmetric-loss", "--no-bootstrap", "--amortized-poses", "encoder",
                  "--search-max-shift-fraction", "0.1", "--mask-radius-angstrom", "30", "--invert-contrast",
                  "--seed", "7", "--num-workers", "1", "--checkpoint-minutes", "2"]
"""Options of ``cryoai abinit`` from before the config was nested; they keep their names and meaning."""


def parse(argv):
    parser = argparse.ArgumentParser()
    add_args(parser)
    return parser.parse_args(["particles.star", "-o", "out"] + argv)


def geometry(**values) -> TrainConfig:
    return build(box=32, pixel_size_angstrom=3.0, input_box=64, input_pixel_size_angstrom=1.5, **values)


def test_every_setting_has_one_option_with_the_config_default():
    args = parse([])
    config = geometry(**dict(config_flags.values_from_args(args), max_minutes=30.0))
    default = geometry(max_minutes=30.0)
    assert config == default
    for name, (group, field) in flat_names().items():
        owner = default if group is None else getattr(default, group)
        if name in ("box", "pixel_size_angstrom", "input_box", "input_pixel_size_angstrom", "device") \
                or field in GROUPS or name == "max_minutes":
            continue
        assert getattr(args, name) == getattr(owner, field), name


def test_existing_option_names_keep_their_meaning():
    config = geometry(**config_flags.values_from_args(parse(LEGACY_OPTIONS)))
    assert (config.schedule.epochs, config.schedule.max_minutes, config.schedule.batch_size) == (2, 3, 16)
    assert (config.optimizer.lr_encoder, config.optimizer.lr_decoder) == (0.002, 0.003)
    assert not config.symmetric_loss and not config.bootstrap.enabled and config.amortized_poses == "encoder"
    assert config.search.max_shift_fraction == 0.1 and config.mask.radius_angstrom == 30.0
    assert config.invert_contrast and config.seed == 7 and config.num_workers == 1
    assert config.schedule.checkpoint_minutes == 2


def test_tuning_constants_are_options():
    args = parse(["--search-rotations", "512", "--search-grid-refresh-steps", "3", "--bootstrap-agreement-momentum",
                  "0.5", "--bootstrap-shift-loss-weight", "0.2", "--encoder-filter-sigmas-px", "0", "2"])
    config = geometry(**dict(config_flags.values_from_args(args), epochs=1))
    assert config.search.rotations == 512 and config.search.grid_refresh_steps == 3
    assert config.bootstrap.agreement_momentum == 0.5 and config.bootstrap.shift_loss_weight == 0.2
    assert config.encoder.filter_sigmas_px == (0.0, 2.0)


def test_configs_are_frozen_and_nested():
    config = geometry(epochs=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.search.rotations = 3
    assert replace(config, search_rotations=3, device="cuda").search.rotations == 3
    assert config.search.rotations == 4096


def test_config_yaml_holds_every_setting_and_reads_back(tmp_path):
    config = geometry(epochs=1, search_rotations=256, bootstrap=False, encoder_filter_sigmas_px=(0.0, 3.0))
    path = str(tmp_path / "config.yaml")
    save_config(config, path)
    with open(path) as handle:
        stored = yaml.safe_load(handle)["TrainConfig"]
    assert set(stored) == {field.name for field in dataclasses.fields(TrainConfig)}
    assert stored["search"]["rotations"] == 256 and stored["bootstrap"]["enabled"] is False
    assert TrainConfig.from_dict(stored) == config
    with pytest.raises(ValueError, match="unknown settings"):
        TrainConfig.from_dict(dict(stored, batch_size=3))


@pytest.mark.parametrize("values, message", [
    (dict(batch_size=1, epochs=1), "--batch-size must be at least 2"),
    (dict(epochs=None), "--epochs, --max-minutes"),
    (dict(epochs=1, lr_encoder=0.0), "--lr-encoder"),
    (dict(epochs=1, search_max_shift_fraction=0.7), "--search-max-shift-fraction"),
    (dict(epochs=1, num_workers=-1), "--num-workers"),
    (dict(epochs=1, amortized_poses="best"), "--amortized-poses"),
])
def test_check_gives_the_core_message_without_the_particles(values, message):
    errors = config_flags.check(**values)
    assert errors and message in errors[0]
    with pytest.raises(ValueError, match=message):
        geometry(**values)


def test_the_bootstrap_exit_radius_is_capped_at_nyquist():
    assert geometry(epochs=1).bootstrap_exit_radius_px == 8.0
    small = build(box=16, pixel_size_angstrom=3.0, input_box=16, input_pixel_size_angstrom=3.0, epochs=1)
    assert small.bootstrap_exit_radius_px == small.nyquist_radius_px == 7.0


def test_the_config_and_its_options_need_no_torch():
    code = "import sys, cryoai_core.train.config_flags; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.stdout.strip() == "False"
