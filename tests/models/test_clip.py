"""models.clip.encode_text: the text tower on the tokens up to the batch's last end-of-text token only."""

from __future__ import annotations

import pytest

from djray._compat import patch_torchvision
from djray.models.clip import build_clip, encode_text

patch_torchvision()
torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def model():
    return build_clip("ViT-B-32", "random", seed=3)[0]


def test_trimmed_text_tower_equals_the_whole_one(model):
    tok = open_clip.get_tokenizer("ViT-B-32")
    captions = ["", "dog", "two people walking on the beach with a red kite at sunset",
                " ".join(["word"] * 120)]  # the last is truncated at 77 tokens: nothing to cut
    for batch in (captions[:3], captions):
        tokens = tok(batch)
        with torch.inference_mode():
            whole = model.encode_text(tokens).numpy()
            cut = encode_text(model, tokens).numpy()
        assert cut.shape == whole.shape
        assert abs(cut - whole).max() < 1e-5


def test_the_padding_is_not_computed(model):
    seen = []
    hook = model.transformer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    try:
        tokens = open_clip.get_tokenizer("ViT-B-32")(["a cat", "a cat on a mat"])
        with torch.inference_mode():
            encode_text(model, tokens)
    finally:
        hook.remove()
    assert seen == [int(tokens.argmax(dim=-1).max()) + 1] and seen[0] < 77
