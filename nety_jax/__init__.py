"""nety-jax: NETY's model family in JAX/Flax, for accelerator training and jitted serving.

Three architectures on one protocol (``model.arch``): NETY's hybrid BiLSTM-encoder /
Transformer-decoder seq2seq model, a GPT-style decoder-only language model and a
recurrent language model.

Public API (imported lazily, so ``load_exported`` runs without the Flax model code):

- ``load_config(path=None, overrides=None) -> Config``: a validated config.
- ``train(cfg, workdir, data=None) -> dict``: train or resume a run directory (``data``: files,
  or a directory ``prepare_data`` wrote).
- ``prepare_data(cfg, paths, out, tokenizer_from=None, ...) -> dict``: ``nety-jax prepare``
  (tokenized shards and their manifest; spawns workers: call it under ``__main__``).
- ``plan_config(cfg) -> MemoryPlan``: ``nety-jax plan`` (a training step's bytes per device,
  compiled from shapes alone; ``.describe()`` is the command's table).
- ``load_pretrained(workdir) -> Pretrained``: ``.generate(texts, ...)``,
  ``.stream(texts, ...)``, ``.logits(batch)``, ``.predict_next(text, top_k)``.
- ``load_exported(directory) -> ExportedModel``: ``.generate(texts, ...)``.
- ``chat(model)``: ``nety-jax chat``'s terminal conversation with a ``Pretrained`` model.
- ``serve(checkpoint, exported, host, port, ...)``: ``nety-jax serve`` (the OpenAI-style HTTP
  server, until SIGTERM or Ctrl-C).
- ``export_run(workdir, out)``: a ``jax.export`` artifact.
- ``quantize_run(workdir, out, activations="float32")``: an int8 copy of a run
  (``nety-jax quantize``).
- ``import_hf(hf_dir, out)``, ``export_hf(workdir, out)``, ``load_hf(hf_dir)``: HuggingFace
  GPT-2 directories in and out (``nety-jax import-hf`` / ``export-hf``).
- ``import_torch(state_dict, vocab, out, config=None, overrides=())``, ``export_torch(workdir,
  out)``: NETY's PyTorch state dicts in and out (``nety-jax import-torch`` / ``export-torch``).
- ``load_source(run_or_hf_dir)``, ``finetune_config(source, config_path, overrides)``: what
  ``train(cfg, workdir, data, init_from=source)`` fine-tunes (``train --init-from``).
- ``get_model(cfg.model) -> Model``: the architecture adapter (init, loss_sums,
  start_decoding, decode_step); its ``.task`` is the task object.
- ``get_task(name) -> Task``: a task (read, encode, batches, extra_metrics, prompts,
  chat_prompt).
- ``generate(variables, tokens, lengths, params, *, model, spec)``: the pure decoding
  function; ``generate_jit`` is it compiled; ``SamplingParams``, ``LoopSpec``.
- ``enable_compilation_cache(path=None)``: JAX's persistent compilation cache.
- ``keep_host_memory()``: glibc's malloc keeps freed memory (faster CPU training; call it
  first, before JAX runs anything).
"""
from __future__ import annotations

from nety_jax._lazy import lazy_getattr

__version__ = "0.2.0"

_API = {"load_config": "nety_jax.config", "Config": "nety_jax.config",
        "train": "nety_jax.training.loop", "prepare_data": "nety_jax.training.prepare_data",
        "plan_config": "nety_jax.training.memory", "quantize_run": "nety_jax.serving.quantize",
        "chat": "nety_jax.serving.chat", "serve": "nety_jax.serving.server",
        "load_pretrained": "nety_jax.serving.pretrained", "Pretrained": "nety_jax.serving.pretrained",
        "load_exported": "nety_jax.serving.export", "ExportedModel": "nety_jax.serving.export",
        "export_run": "nety_jax.serving.export", "get_model": "nety_jax.models.registry",
        "import_hf": "nety_jax.models.registry", "export_hf": "nety_jax.models.registry",
        "load_hf": "nety_jax.models.registry", "import_torch": "nety_jax.models.registry",
        "export_torch": "nety_jax.models.registry", "load_source": "nety_jax.training.init_from",
        "finetune_config": "nety_jax.training.init_from",
        "get_task": "nety_jax.tasks.registry", "Task": "nety_jax.tasks.base",
        "generate": "nety_jax.decoding.generation", "generate_jit": "nety_jax.decoding.generation",
        "SamplingParams": "nety_jax.decoding.sampling", "LoopSpec": "nety_jax.decoding.spec",
        "enable_compilation_cache": "nety_jax.runtime", "keep_host_memory": "nety_jax.runtime"}

__all__ = sorted(_API) + ["__version__"]
__getattr__ = lazy_getattr(__name__, _API)


def __dir__():
    return __all__
