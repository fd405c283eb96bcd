"""QA round 7: `predict-next` cut a text too long for the model without the warning README
promises (`generate` and `complete` gave it)."""
from nety_jax.serving.pretrained import load_pretrained


def test_a_text_too_long_for_the_model_is_cut_with_a_warning(trained_gpt):
    warnings = []
    pre = load_pretrained(trained_gpt[0], warn=warnings.append)
    assert pre.predict_next("le chat " * 500, top_k=2)
    assert len(warnings) == 1 and "was cut to" in warnings[0], warnings
    warnings.clear()
    pre.predict_next("le chat", top_k=2)
    assert warnings == []
