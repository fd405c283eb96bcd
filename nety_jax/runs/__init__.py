"""The run directory, as a layer of its own: files, checkpoints, and the guarded writers.

Below models/, training/ and serving/ (it imports only config/, data/'s tokenizer
loading and errors), so every layer above reads and writes runs through it:

- ``files``: where each file of a run lives; ``read_run_config``, ``write_run_config``;
- ``checkpoints``: Orbax managers, saving, listing, restoring past damaged steps;
- ``weights``: a run's variables without the optimizer (inference; importers' writes);
- ``compat``: whether a checkpoint fits a config;
- ``quiet``: Orbax's noise kept off the terminal;
- ``guard``: the one guard every command that writes files goes through (its docstring has
  the API: ``with guard.output(out, "import-hf", overwrite) as tmp: ...``);
- ``kinds``: the writers and what an existing path holds (markers, and runs and exports made
  before markers); ``manifest``: the marker ``nety-jax.json``, its checksums and ``verify``.
"""
from nety_jax._lazy import lazy_getattr

_NAMES = {"read_run_config": "nety_jax.runs.files", "write_run_config": "nety_jax.runs.files",
          "steps_on_disk": "nety_jax.runs.checkpoints", "latest_step": "nety_jax.runs.checkpoints",
          "restore_inference_variables": "nety_jax.runs.weights", "write_weights": "nety_jax.runs.weights",
          "claim": "nety_jax.runs.guard", "output": "nety_jax.runs.guard", "mark": "nety_jax.runs.guard",
          "verify": "nety_jax.runs.manifest"}
__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
