"""QA round 4: the prefix cache's bound binds."""
import pytest


def test_a_prefix_cache_larger_than_memory_is_refused(trained_gpt):
    """`serve --prefix-cache-mb 100000000000` was taken: a cache that evicts only past 100 TB never
    evicts, so a server meeting many prompts grew until the kernel killed it. A size over what a
    device holds is one error with the figure, before the server listens."""
    from nety_jax.errors import NetyError
    from nety_jax.serving.pretrained import load_pretrained
    with pytest.raises(NetyError, match=r"prefix cache size \(--prefix-cache-mb\) 1e\+11 MB is more than a device "
                                        r"holds \([0-9,]+ MB, host memory\)"):
        load_pretrained(trained_gpt[0], prefix_cache_mb=1e11)
    model = load_pretrained(trained_gpt[0], prefix_cache_mb=64)
    assert model.prefix_cache is not None
