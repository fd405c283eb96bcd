"""QA round 7: config values past what the code under them takes."""
import pytest

from conftest import TINY, run_main


@pytest.mark.parametrize("setting, message", [
    ("decode.top_k=3000000000", "decode.top_k=3000000000 is too large"),
    ("train.seed=18446744073709551616", "train.seed=18446744073709551616 is too large"),
    ("train.b1=1.0", "train.b1=1.0 must be < 1"),
    ("train.b2=1", "train.b2=1.0 must be < 1"),
])
def test_a_value_the_code_cannot_take_is_refused_at_load(setting, message):
    """`decode.top_k` of 2**31 or more (meaning "keep all", as any cut past the vocabulary does)
    and `train.seed` of 2**63 or more were tracebacks (OverflowError) when generation made its
    int32 rows or training its PRNG key, after the data was read; `train.b1=1.0` (or b2) made
    Adam's bias correction divide by 0: NaN at the first step, blamed on the learning rate."""
    from nety_jax.config import load_config
    from nety_jax.errors import ConfigError
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(TINY, [setting])


def test_the_largest_values_that_work_are_still_taken():
    from nety_jax.config import load_config
    cfg = load_config(TINY, ["decode.top_k=2147483647", "train.seed=9223372036854775807", "train.b2=0.999999"])
    assert cfg.decode.top_k == 2 ** 31 - 1 and cfg.train.seed == 2 ** 63 - 1


def test_a_huge_top_k_is_one_line_in_generate_and_the_api(trained_run):
    result = run_main("generate", "--checkpoint", trained_run, "--prompt", "Bonjour", "--top-k", "3000000000")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "decode.top_k=3000000000 is too large" in result.stderr
    import nety_jax
    from nety_jax.errors import NetyError
    model = nety_jax.load_pretrained(trained_run)
    with pytest.raises(NetyError, match="top_k"):
        model.generate(["Bonjour"], top_k=3_000_000_000)
    assert model.generate(["Bonjour"], top_k=2 ** 31 - 1, max_new_tokens=3)  # every token kept
