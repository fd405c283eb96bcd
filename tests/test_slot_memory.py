"""A decode chunk reads only the memory positions its live slots use (decoding/slots.py's
``memory``, the hybrid's ``slot_memory`` / ``slot_narrow``): the same tokens as reading the
whole slot layout, and the step's cross-attention and copy head over the narrowed memory only."""
import jax
import numpy as np
import pytest

from nety_jax.decoding import slots as device
from nety_jax.decoding.spec import LoopSpec
from nety_jax.models import get_model


@pytest.fixture(scope="module")
def hybrid(tiny_cfg):
    """The tiny hybrid with the copy head (its view of the memory is narrowed too), random weights."""
    cfg = tiny_cfg.replace_model(copy=True)
    model = get_model(cfg.model)
    return model, model.init(jax.random.PRNGKey(1)), cfg.data.max_src_len


def _slots(model, variables, source_len, width, spec):
    """Two live slots from one prefill at ``width``: a greedy row and a seeded one, prompts of
    5 and ``width`` tokens."""
    room = model.prompts.max_new_tokens()
    tokens = np.random.default_rng(0).integers(4, model.cfg.vocab_size, (2, width)).astype(np.int32)
    settings = device.RowSettings.create([0.0, 0.9], [0, 0], [1.0, 1.0], [room, room], [1, 2])
    state = device.empty(model, variables, 2, room, source_len)
    return device.admit(variables, state, tokens, np.array([5, width], np.int32), settings,
                        np.arange(2, dtype=np.int32), model=model, spec=spec, source_len=source_len)


def test_a_chunk_over_the_live_memory_gives_the_tokens_of_the_whole_layout(hybrid):
    model, variables, source_len = hybrid
    spec = LoopSpec(max_new_tokens=model.prompts.max_new_tokens(), ignore_eos=True)
    memory = model.slot_memory(16, source_len)
    assert memory == 17  # the pooled vector first, then one position per token
    outs = {}
    for m in (0, memory):
        state = _slots(model, variables, source_len, 16, spec)
        args = (variables, state, np.zeros(2, bool), np.zeros(2, np.int32), np.int32(8))
        state, progress = device.decode_chunk(*args, model=model, spec=spec, width=9, memory=m)
        outs[m] = (np.asarray(state.tokens), np.asarray(progress))
        # the memory kept whole in the state: later chunks may read more of it
        assert state.cache["copy"]["memory"].shape[1] == source_len + 1
    np.testing.assert_array_equal(outs[0][0], outs[memory][0])
    np.testing.assert_array_equal(outs[0][1], outs[memory][1])


def test_the_narrowed_step_attends_over_the_live_memory_only(hybrid):
    model, variables, source_len = hybrid
    spec = LoopSpec(max_new_tokens=model.prompts.max_new_tokens(), ignore_eos=True)
    state = device.empty(model, variables, 2, model.prompts.max_new_tokens(), source_len)
    args = (variables, state, np.zeros(2, bool), np.zeros(2, np.int32), np.int32(2))
    heads = model.cfg.dec_heads

    def scores(m):  # the widths of the cross-attention's (S, H, 1, M) scores in the chunk's program
        text = device.decode_chunk.lower(*args, model=model, spec=spec, width=3, memory=m).as_text()
        return {n for n in (9, source_len + 1) if f"tensor<2x{heads}x1x{n}xf32>" in text}
    assert scores(0) == {source_len + 1}
    assert scores(model.slot_memory(8, source_len)) == {9}


def test_a_pooled_memory_or_a_full_width_prompt_reads_everything(hybrid, tiny_cfg):
    model, _, source_len = hybrid
    assert model.slot_memory(source_len, source_len) == 0
    pooled = get_model(tiny_cfg.replace_model(memory="pooled").model)
    assert pooled.slot_memory(8, source_len) == 0
