"""QA round 3: a language model's prompt is cut for the reply asked, not for the compiled maximum."""


def test_a_prompt_is_cut_only_as_far_as_the_asked_reply_needs(trained_gpt):
    """A 64-position GPT asked for 49 new tokens after a 15-token prompt (64 positions: room for
    it whole) cut the prompt to its last 2 tokens, saying "the longest this model takes": prompts
    were cut for the compiled loop's length (49 rounded up to a power of two, capped at 63), not
    for the reply asked. Now the prompt is whole and the compiled length fits what is left."""
    from nety_jax.serving.pretrained import load_pretrained
    warnings = []
    model = load_pretrained(trained_gpt[0], warn=warnings.append)
    ids = model.tokenizer.encode("Le matin, le chat mange du pain et boit du lait.")
    prompt = model.tokenizer.decode(ids[:15])
    room = model.config.model.max_len - 15 + 1
    assert len(model.tokenizer.encode(prompt)) == 15 and room > 32  # its power of two is over the room
    full = model.generate([prompt], temperature=0.0, max_new_tokens=room, with_prompt=True)[0][0]
    assert warnings == [] and full.startswith(prompt), (warnings, full)
    short = model.generate([prompt], temperature=0.0, max_new_tokens=3, with_prompt=True)[0][0]
    assert full.startswith(short), (short, full)  # greedy: the short reply is the long one's start
    model.generate([prompt], temperature=0.0, max_new_tokens=room + 1)  # one more: now it is cut
    assert warnings == ["warning: prompt 1 was cut to 14 tokens (the longest this model takes)"], warnings
