"""The run directory, as a layer of its own: files, checkpoints, and the guarded writers.

Below models/, training/ and serving/ (it imports only config/, data/'s tokenizer
loading and errors), so every layer above reads and writes runs through it:

- ``files``: where each file of a run lives; ``read_run_config``, ``write_run_config``;
- ``checkpoints``: Orbax managers, saving, listing, restoring past damaged steps;
- ``weights``: a run's variables without the optimizer (inference; importers' writes);
- ``compat``: whether a checkpoint fits a config;
- ``quiet``: Orbax's noise kept off the terminal.
"""
from nety_jax._lazy import lazy_getattr

_NAMES = {"read_run_config": "nety_jax.runs.files", "write_run_config": "nety_jax.runs.files",
          "steps_on_disk": "nety_jax.runs.checkpoints", "latest_step": "nety_jax.runs.checkpoints",
          "restore_inference_variables": "nety_jax.runs.weights", "write_weights": "nety_jax.runs.weights"}
__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
