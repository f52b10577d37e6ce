"""A word-level tokenizer built from a vocabulary on the spot (no download): the tiny test
components' and ShapesWorld's base text encoder's."""

from __future__ import annotations

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def word_tokenizer(words, model_max_length: int = 128):
    """A lower-casing word-level tokenizer that appends `</s>` (like T5's) and pads with `<pad>`."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=model_max_length,
    )
