"""Every bit of a seed reaches its key: seeds 2**32 apart drew the same sampled replies when
keys were built from the seed modulo 2**32 (QA: the server and the Python API accept seeds up
to 2**63 - 1). Seeds below 2**32 keep the keys they always had."""
import jax
import numpy as np

from nety_jax.decoding.keys import row_keys
from nety_jax.decoding.slots import RowSettings


def test_seeds_below_2_32_keep_their_keys():
    seeds = np.array([0, 1, 7, 2**32 - 1])
    want = np.stack([np.asarray(jax.random.PRNGKey(np.uint32(s))) for s in seeds])
    np.testing.assert_array_equal(row_keys(seeds, 4), want)
    base = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(row_keys(7, 3, first_row=2),
                                  np.stack([np.asarray(jax.random.fold_in(base, i)) for i in (2, 3, 4)]))


def test_seeds_2_32_apart_get_other_keys_on_every_path():
    for a, b in ((0, 2**32), (5, 5 + 2**40), (1, 2**63 - 1)):
        assert not np.array_equal(row_keys(a, 2), row_keys(b, 2))  # one seed for the batch
        per_row = row_keys(np.array([a, b], np.uint64), 2)  # one seed per row
        assert not np.array_equal(per_row[0], per_row[1])
        slots = np.asarray(RowSettings.create([1.0] * 2, [0] * 2, [1.0] * 2, [4] * 2, [a, b]).params().key)
        np.testing.assert_array_equal(slots, per_row)  # the slots' keys are row_keys'
