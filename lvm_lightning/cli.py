"""LightningCLI for lvm_lightning: ``lvm-train`` (or ``python train.py``) trains the default mixture model."""

import copy
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import pytorch_lightning as pl
from jsonargparse import ArgumentParser, Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lvm_lightning.callbacks import (
    ActiveUnits,
    AmortizationGap,
    Convergence,
    DensityPlot,
    GradientSNR,
    ImageGrids,
    LatentScatter,
    ProgressBar,
    RunCheckpoint,
    ScalarLayout,
    TrueLogDensity,
)
from lvm_lightning.checkpoints import as_config, read_file, stored_arguments
from lvm_lightning.classes import import_trusted
from lvm_lightning.console import quiet_console
from lvm_lightning.data import SplitData
from lvm_lightning.errors import UsageError, one_line_errors
from lvm_lightning.files import AtomicCheckpointIO
from lvm_lightning.module import LVMModule
from lvm_lightning.resume import Resume, resolve_resume
from lvm_lightning.shipped import with_shipped_configs

# The class each part takes unless a config or the command line names another.
CLASS_DEFAULTS = {
    "data": "lvm_lightning.data.GaussianMixtureData",
    "model.lvm": "lvm_lightning.models.MixtureModel",
    "model.estimator": "lvm_lightning.objectives.Exact",
    "model.optimizer": "lvm_lightning.schedules.Adam",
}


class LVMCLI(LightningCLI):
    """Links the data's dimension and image shape into the model, and adds checkpointing, the convergence signal, the true density, density plots and image pictures.

    ``resume`` (from ``resolve_resume``) points a resumed run's TensorBoard logger at the checkpoint's run folder; ``trusted``
    names the modules whose classes the checkpoint of ``--ckpt_path`` may name.
    """

    def __init__(self, *args: Any, resume: Optional[Resume] = None, trusted: Sequence[str] = (), **kwargs: Any) -> None:
        self.resume, self.trusted = resume, trusted
        self.parsers: list[LightningArgumentParser] = []  # one per subcommand, each with the class defaults
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parses as LightningCLI does, once the class defaults are dropped where the command line or a config names another class:
        jsonargparse would carry the default class's arguments into the one named (a MixtureModel's MLP encoder into a LinearGaussian)."""
        given = list(sys.argv[1:] if args is None else args) if not isinstance(args, (dict, Namespace)) else None
        if given is not None:
            probe = [arg for arg in given if arg not in ("-h", "--help") and not arg.startswith("--print_config")]
            try:
                config = parser.parse_args(probe)
            except Exception:  # reported by the parse below, with the defaults as they are
                config = None
            section = config.get(config.get("subcommand") or "", Namespace()) if config is not None else Namespace()
            for key, class_path in CLASS_DEFAULTS.items():
                chosen = section.get(key)
                if isinstance(chosen, Namespace) and chosen.get("class_path") != class_path:
                    for subparser in self.parsers:
                        subparser.set_defaults({key: None})
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """As LightningCLI does, the model arguments stored in ``--ckpt_path``'s checkpoint replace the config's, but each checked
        first (``checkpoints.stored_arguments``): LightningCLI would hand them to jsonargparse, which imports whatever they name."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        arguments = stored_arguments(read_file(ckpt_path), LVMModule, ckpt_path, self.trusted)
        if "__class__" in arguments:
            raise UsageError(f"{ckpt_path!r} stores a model class of its own; lvm-train resumes LVMModule runs: do not resume from it")
        if arguments:
            self.config = self.parser.parse_object({subcommand: {"model": as_config(arguments)}}, self.config)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.data_dim", "model.lvm.init_args.data_dim", apply_on="instantiate")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ProgressBar, "progress_bar")
        parser.add_lightning_class_args(DensityPlot, "density_plot")
        parser.add_lightning_class_args(TrueLogDensity, "true_density")
        parser.add_lightning_class_args(Convergence, "convergence")
        parser.add_lightning_class_args(AmortizationGap, "amortization_gap")
        parser.add_lightning_class_args(ImageGrids, "image_grids")
        parser.add_lightning_class_args(LatentScatter, "latent_scatter")
        parser.add_lightning_class_args(ActiveUnits, "active_units")
        parser.add_lightning_class_args(ScalarLayout, "scalar_layout")  # TensorBoard's CUSTOM SCALARS tab; --scalar_layout.enabled false: none
        parser.add_lightning_class_args(GradientSNR, "gradient_snr")  # off unless --gradient_snr.every_n_epochs N: it costs num_estimates steps
        self.parsers.append(parser)
        parser.set_defaults({key: {"class_path": class_path} for key, class_path in CLASS_DEFAULTS.items()})
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "gradient_snr.every_n_epochs": 0,
                # After the callbacks' epoch-end work (the gap's draws), so that a resumed run repeats none of it.
                "checkpoint.save_on_train_epoch_end": True,
                # A resumed run rewrites the checkpoints of the epochs it repeats, rather than leaving -v1, -v2 copies.
                "checkpoint.enable_version_counter": False,
                "trainer.max_epochs": 30,
                "trainer.log_every_n_steps": 10,
                # no_grad rather than inference_mode in validate and test: AIS (a validation estimator) differentiates in z there.
                "trainer.inference_mode": False,
                "trainer.logger": {
                    "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                    # No hp_metric = −1 placeholder: ScalarLayout writes the HPARAMS entry, its results read from the logged scalars.
                    "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
                },
            }
        )

    def before_instantiate_classes(self) -> None:
        logger = self._get(self.config, "trainer.logger")
        if self.resume is None or self.resume.run_folder is None or not isinstance(logger, Namespace) or not logger.class_path.endswith(".TensorBoardLogger"):
            return
        args, folder = logger.init_args, self.resume.run_folder
        if args.version is None and (Path(args.save_dir) / args.name).resolve() == folder.parent.resolve():
            args.version = folder.name
        if (Path(args.save_dir) / args.name / str(args.version)).resolve() == folder.resolve():
            # The killed run's points after the checkpoint are hidden; the resumed run writes them again.
            args.purge_step = self.resume.step + 1 if self.resume.ckpt_path is not None else 0
            if self.resume.ckpt_path is not None:
                args.default_hp_metric = False  # the HPARAMS entry (and its placeholder hp_metric = −1 at step 0) is there already

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The trainer with the parsed callbacks, less the checkpoint and the progress bar when the trainer turns them off (Lightning refuses both),
        writing checkpoints atomically unless other plugins are given; for fit, once the data are checked against the model."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        off = tuple(kind for kind, flag in ((RunCheckpoint, "enable_checkpointing"), (ProgressBar, "enable_progress_bar")) if config.get(flag) is False)
        if self.subcommand == "fit" and isinstance(self.datamodule, SplitData):
            # Before the Trainer (whose start-up lines would stand before the error) and before the run folder:
            # loads the splits on the CPU (fit moves them to the device later) and checks them against the model.
            self.datamodule.setup("fit")
            self.model.check_data(self.datamodule)
        if config.get("plugins") is None:
            config["plugins"] = [AtomicCheckpointIO()]  # a kill while a checkpoint is written leaves the previous one whole
        return self._instantiate_trainer(config, [callback for callback in callbacks if not isinstance(callback, off)])

    def _say(self, template: str) -> None:
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask, one prints
        if self.trainer.is_global_zero:
            print(template.format(log_dir=log_dir), flush=True)

    def before_fit(self) -> None:
        devices, cores = self.trainer.num_devices, os.cpu_count() or 1
        if self.trainer.strategy.root_device.type == "cpu" and devices > cores and self.trainer.is_global_zero:
            print(
                f"warning: {devices} processes on {cores} CPU cores: each step waits for the slowest; pass --trainer.devices {cores} or fewer", file=sys.stderr
            )
        self._say("run folder (TensorBoard logs and checkpoints): {log_dir}")

    def after_fit(self) -> None:
        self._say("checkpoints: {log_dir}/checkpoints  (evaluate: lvm-evaluate CKPT)")


def option_values(argv: list[str], name: str) -> list[str]:
    """The values given to the command-line option ``name`` (``NAME VALUE`` or ``NAME=VALUE``), in order."""
    values = []
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(f"{name}="):
            values.append(arg.split("=", 1)[1])
    return values


def with_option(argv: list[str], name: str, value: Optional[str]) -> list[str]:
    """``argv`` with every ``name`` option removed, then ``name value`` appended unless ``value`` is None."""
    kept, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == name:
            skip = i + 1 < len(argv)
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept if value is None else [*kept, name, value]


def build_module(model_section: dict[str, Any], data_dim: int) -> LVMModule:
    """The LVMModule that a config's ``model`` section (class paths and init args) describes, with ``data_dim`` linked in as the CLI does."""
    section = copy.deepcopy(model_section)
    section["lvm"].setdefault("init_args", {})["data_dim"] = data_dim
    parser = ArgumentParser()
    parser.add_class_arguments(LVMModule, "model")
    return parser.instantiate_classes(parser.parse_object({"model": section})).model


def main(args: Optional[list[str]] = None) -> None:
    """Entry point: runs ``fit`` when no subcommand is given, and turns UsageError into one line and exit code 2."""
    argv = sys.argv[1:] if args is None else list(args)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # class paths of the user's own files in the working folder, as `python -m` would find them
    # "Seed set to 0" on stderr would stand before our one-line errors; the seed is in the saved config anyway.
    logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["fit", *argv]
    with one_line_errors("lvm-train fit"):
        # LightningCLI reads --ckpt_path's hyperparameters as it parses: a damaged file must be caught before that.
        # --trust is ours, not LightningCLI's: the modules whose classes a resumed checkpoint may name (your own, as for lvm-evaluate).
        argv = with_shipped_configs(argv)
        trusted = option_values(argv, "--trust")
        argv = with_option(argv, "--trust", None)
        import_trusted(trusted)
        resume = resolve_resume((option_values(argv, "--ckpt_path") or [None])[-1], trusted)  # the last one counts, as in argparse
        if resume is not None:
            argv = with_option(argv, "--ckpt_path", resume.ckpt_path)
        quiet_console(resuming=resume is not None)
        # LightningCLI warns when given args while sys.argv holds arguments too: hand it ours as sys.argv.
        sys.argv[1:] = argv
        LVMCLI(
            LVMModule,
            pl.LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            parser_kwargs={"exit_on_error": False},  # so that a mistyped option is one line too, not the full usage
            save_config_kwargs={"overwrite": True},  # a resumed run writes into its own folder again
            resume=resume,
            trusted=trusted,
        )


if __name__ == "__main__":
    main()
