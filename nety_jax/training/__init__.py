"""Training for every model: pure steps, device placement, the loop, metrics (run directories: runs/)."""
from nety_jax._lazy import lazy_getattr

_NAMES = {"train": "nety_jax.training.loop", "TrainState": "nety_jax.training.steps",
          "create_train_state": "nety_jax.training.steps", "train_step": "nety_jax.training.steps",
          "eval_step": "nety_jax.training.steps", "Runner": "nety_jax.training.parallel",
          "make_optimizer": "nety_jax.training.optim"}
__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
