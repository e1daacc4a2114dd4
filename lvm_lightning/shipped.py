"""The configs shipped with the package, addressable by name from any folder: ``lvm-train fit --config mixture_vae``."""

from pathlib import Path

from lvm_lightning.errors import UsageError

FOLDER = Path(__file__).resolve().parent / "configs"
SUFFIXES = (".yaml", ".yml")


def names() -> list[str]:
    """The names of the shipped configs (their file names without .yaml), sorted."""
    return sorted(path.stem for path in FOLDER.glob("*.yaml"))


def config_file(name: str) -> Path:
    """The shipped config called ``name``; UsageError naming them all when there is none."""
    path = FOLDER / f"{name}.yaml"
    if name not in names():
        raise UsageError(f"--config {name!r} is neither a file nor a shipped config: pass a YAML file, or one of {', '.join(names())}")
    return path


def is_name(value: str) -> bool:
    """Whether a --config value names a shipped config rather than a file: a bare word that is not a file here (a folder of
    that name, such as a run folder written here, does not hide the shipped config)."""
    return "/" not in value and "\\" not in value and not value.endswith(SUFFIXES) and not Path(value).is_file()


def with_shipped_configs(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config NAME`` (or ``--config=NAME``) that names a shipped config replaced by that config's path."""
    out, follows = [], False
    for arg in argv:
        if follows and is_name(arg):
            arg = str(config_file(arg))
        elif arg.startswith("--config=") and is_name(arg.split("=", 1)[1]):
            arg = f"--config={config_file(arg.split('=', 1)[1])}"
        out.append(arg)
        follows = arg == "--config"
    return out
