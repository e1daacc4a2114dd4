"""Where a resumed run continues: the newest loadable checkpoint of its run folder, or a fresh start in that folder.

A run can be killed at any instant: before its first checkpoint, while Lightning writes one (it writes
to a temporary file and renames it, so a ``.ckpt`` is whole or absent), or between the epoch's
checkpoint and ``last.ckpt``. Resuming from ``--ckpt_path`` therefore takes the file given if it loads
(``last.ckpt``: the newest loadable checkpoint beside it), else the newest one that loads, and says
which; a run folder without any starts afresh there. The logger is pointed at the same folder, and
TensorBoard told to hide the events that the killed run wrote after the checkpoint (``purge_step``),
so that every step's point appears once.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from lvm_lightning.checkpoints import check_declared, data_recipe, read_file, stored_arguments
from lvm_lightning.errors import UsageError
from lvm_lightning.module import LVMModule

LIGHTNING_NAMES = ("last", "best", "hpc", "registry")  # --ckpt_path values that Lightning resolves itself


@dataclass
class Resume:
    """A resumed run: the checkpoint to load (None: start afresh), the run folder it belongs to (None: not a run folder), and its global step."""

    ckpt_path: Optional[str]
    run_folder: Optional[Path]
    step: int


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_resume(ckpt_path: Optional[str], trusted: Sequence[str] = ()) -> Optional[Resume]:
    """The checkpoint that ``--ckpt_path`` resumes from (see the module's docstring); None when there is nothing to resolve.

    Only ``RUN_FOLDER/checkpoints/last.ckpt`` falls back to the checkpoints beside it (a mistyped or damaged name
    of any other file is an error, not a resume of something else). ``trusted``: modules whose classes it may name.
    Raises UsageError when the file is missing (outside a run's checkpoints folder), or when no candidate loads.
    """
    if ckpt_path is None or ckpt_path in LIGHTNING_NAMES:
        return None
    given = Path(ckpt_path)
    folder = given.parent
    run_folder = folder.parent if folder.name == "checkpoints" else None
    falls_back = run_folder is not None and given.name == "last.ckpt"
    # last.ckpt is written after the epoch's own checkpoint: a kill between the two leaves the epoch's newer.
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if falls_back else [given]
    refusals: dict[Path, UsageError] = {}
    for candidate in candidates:
        try:
            checkpoint = read_file(candidate)
            # Every class it names checked, and its declared sizes against its weights, before LightningCLI sees them.
            check_declared(LVMModule, stored_arguments(checkpoint, LVMModule, str(candidate), trusted), checkpoint, str(candidate))
            data_recipe(checkpoint, str(candidate), trusted)  # not used on resume (the data come from the config), but a hostile class refuses the file
        except UsageError as error:
            refusals[candidate] = error
            continue
        if candidate != given:
            why = "does not load" if given in refusals else "missing" if not given.is_file() else "older"
            _say(f"resuming from {str(candidate)!r}, the newest checkpoint that loads ({ckpt_path!r} {why})")
        return Resume(str(candidate), run_folder, int(checkpoint.get("global_step", 0)))
    if list(refusals) == [given]:
        raise refusals[given]
    if refusals:
        raise UsageError(f"no checkpoint in {str(folder)!r} loads ({len(refusals)} tried); the newest: {next(iter(refusals.values()))}")
    if falls_back:  # a run stopped before its first checkpoint, or before it made its folder
        _say(f"{str(run_folder)!r} has no checkpoint yet (the run was stopped before its first): starting it afresh in that folder")
        return Resume(None, run_folder, 0)
    raise UsageError(f"--ckpt_path {ckpt_path!r} not found: pass a run's RUN_FOLDER/checkpoints/last.ckpt, or start afresh without --ckpt_path")
