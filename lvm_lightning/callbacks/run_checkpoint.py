"""Lightning's ModelCheckpoint, trusting a resumed checkpoint with nothing but the names of files in its own folder."""

from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor

PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose restored state names only files inside its ``dirpath``: it deletes the files its state names
    (the previous ``last``, the worst of the top k) as training goes on, so a shared checkpoint must not choose them."""

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key, so that checkpoints written before and after this class resume alike.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def _inside(self, path: Any) -> bool:
        if not isinstance(path, str) or "://" in path or self.dirpath is None:
            return False
        return Path(self.dirpath).resolve() in Path(path).resolve().parents

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        for key in PATHS:
            if key in state and not self._inside(state[key]):
                state[key] = ""
        best_k = state.get("best_k_models")
        state["best_k_models"] = {path: score for path, score in best_k.items() if self._inside(path)} if isinstance(best_k, dict) else {}
        if not isinstance(state.get("best_model_score"), Tensor):
            state["best_model_score"] = None
        if not isinstance(state.get("kth_value"), Tensor):
            state.pop("kth_value", None)
        state.setdefault("best_model_path", "")
        super().load_state_dict(state)
