"""What both inference front-ends offer alike, as Gemma's ``TransformerLike`` does for its models:
``Pretrained`` (a run directory, ``load_pretrained``) and ``ExportedModel`` (a ``nety-jax
export`` directory, ``load_exported``). Code written against ``InferenceModel`` runs on either;
what only a run directory can do (streaming, chat, logits, beam search's N best) stays on
``Pretrained``."""
from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence, runtime_checkable


@runtime_checkable
class InferenceModel(Protocol):
    """A loaded model that turns prompts into replies.

    ``config``: the run's resolved config; ``tokenizer``; ``task`` (``nety_jax.tasks``) and
    ``prompts`` (its prompt policy); ``step``: the training step of the weights; ``warn``: where
    warnings go (a prompt cut to fit)."""

    config: object
    tokenizer: object
    step: int
    warn: Callable[[str], None]

    @property
    def task(self): ...

    @property
    def prompts(self): ...

    def generate(self, texts: Sequence[str], seed=0, num_samples: int = 1, with_prompt: bool = False,
                 batch_size: Optional[int] = None, **settings) -> list[list[str]]:
        """``num_samples`` replies per text (each a list), the same for the same seed whichever
        front-end runs them; settings: temperature, top_k, top_p, max_new_tokens (a value or one
        per text) and what else the front-end takes."""
        ...

    def generate_ids(self, texts: Sequence[str], seed=0, num_samples: int = 1, **settings) -> dict:
        """``generate``'s ids before decoding: ``{"tokens": (R, N), "lengths": (R,), "scores":
        (R,)}`` numpy, R = len(texts) * num_samples rows, each text's samples in turn."""
        ...
