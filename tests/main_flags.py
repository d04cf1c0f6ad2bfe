"""imagenet_main's flags for tests that call imagenet_main.run in process: a fresh FlagValues each time,
so that no test sees another's flags."""

from absl import flags

from official.xception import xception_flags


def parse(defaults=None, **values):
    """FlagValues of imagenet_main parsed from `defaults` updated with `values` (each `--name=value`);
    a value of None leaves that flag at its default."""
    settings = dict(defaults or {}, **values)
    flag_values = flags.FlagValues()
    xception_flags.define_all(flag_values)
    flag_values(["imagenet_main"] + [f"--{name}={value}" for name, value in settings.items()
                                     if value is not None])
    return flag_values
