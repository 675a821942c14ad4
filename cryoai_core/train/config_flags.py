"""The options of ``cryoai abinit``, generated from :class:`~cryoai_core.train.config.TrainConfig` (no torch).

Every field of the config marked as a flag becomes one option named after its flat setting name
(:func:`~cryoai_core.train.config.flat_names`, underscores as dashes), with the field's default and help. A
boolean that defaults to true becomes ``--no-<name>``, one that defaults to false ``--<name>``. The Scipion
form takes its defaults from :func:`defaults` and checks its values with :func:`check`, the core's own checks.
"""
import argparse
import dataclasses

from cryoai_core.train import config as train_config


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option of a config field."""

    name: str
    """Flat setting name (``search_rotations``), the ``argparse`` destination."""
    field: dataclasses.Field

    @property
    def default(self):
        field = self.field
        return field.default_factory() if field.default is dataclasses.MISSING else field.default

    @property
    def flag(self) -> str:
        dashed = self.name.replace("_", "-")
        if isinstance(self.default, bool) and self.default:
            return f"--no-{dashed}"
        return f"--{dashed}"


def options() -> list:
    """The :class:`Option` of every config field a user may set, in the config's order."""
    found = []
    for name, (group, field_name) in train_config.flat_names().items():
        owner = train_config.TrainConfig if group is None else train_config.GROUPS[group]
        field = {f.name: f for f in dataclasses.fields(owner)}[field_name]
        if field.metadata.get("flag", True) and field_name not in train_config.GROUPS:
            found.append(Option(name, field))
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every config option to ``parser`` (defaults and help from the config)."""
    for option in options():
        default, text = option.default, option.field.metadata.get("help", "")
        if isinstance(default, bool):
            parser.add_argument(option.flag, dest=option.name, action="store_false" if default else "store_true",
                                help=text)
            continue
        kwargs = {"dest": option.name, "default": default, "choices": option.field.metadata.get("choices")}
        if isinstance(default, tuple):
            kwargs.update(type=float, nargs="+")
        else:
            kwargs["type"] = float if default is None else type(default)
        written = " ".join(map(str, default)) if isinstance(default, tuple) else default
        shown = "" if default is None else f" (default {written})"
        parser.add_argument(option.flag, help=(text + shown).replace("%", "%%"), **kwargs)


def values_from_args(args: argparse.Namespace) -> dict:
    """Flat setting name -> value of every config option in parsed ``args``."""
    return {option.name: (tuple(value) if isinstance(value, list) else value)
            for option in options() for value in [getattr(args, option.name)]}


def defaults() -> dict:
    """Flat setting name -> default of every config option."""
    return {option.name: option.default for option in options()}


def check(**values) -> list:
    """The core's error messages for the given flat settings (others at their defaults); empty when valid.

    The run's geometry is not checked here (it depends on the particles); the budget is, so give ``epochs``
    or ``max_minutes``.
    """
    errors = []
    top, groups = {}, {}
    for name, value in values.items():
        group, field = train_config.locate(name)
        (top if group is None else groups.setdefault(group, {}))[field if group is None else field] = value
    for group, part in groups.items():
        try:
            train_config.GROUPS[group](**part)
        except (TypeError, ValueError) as error:
            errors.append(str(error))
    try:
        box = train_config.MIN_BOX
        train_config.TrainConfig(box=box, pixel_size_angstrom=1.0, input_box=box, input_pixel_size_angstrom=1.0,
                                 **top)
    except (TypeError, ValueError) as error:
        errors.append(str(error))
    return errors
