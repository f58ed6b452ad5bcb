"""ToyWorld's WordPiece vocabulary, laid out like mBERT's so the special ids hold.

Trained with the `tokenizers` library on sentences that between them use every word form
the grammars can produce (not on the sampled corpus), so one vocabulary serves every
seed and scale and never meets an unknown word. Lines 0-103 are reserved the mBERT way:
`[PAD]` 0, `[UNK]` 100, `[CLS]` 101, `[SEP]` 102, `[MASK]` 103 and `[unusedN]` on line N
elsewhere, of which BERTGEN overwrites some with `[STOP]` and the `[TO_X]` tags.
"""

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from ..vocab import SPECIAL_IDS, UNK
from . import captions, sentences

RESERVED = max(SPECIAL_IDS.values()) + 1  # learned pieces start right after [MASK]
# Big enough to keep most whole words of four languages, small enough that rarer
# inflected forms share pieces (Turkish suffixes, German endings).
VOCAB_SIZE = 1400


def cover_texts() -> list:
    """Every caption and sentence form, all four languages, in a fixed order."""
    texts = []
    for lang in captions.LANGS:
        texts += captions.cover_captions(lang)
        texts += (sentences.realise(s, lang) for s in sentences.cover_sentences())
    return texts


def _tokenizer(vocab: dict | None = None) -> Tokenizer:
    # Same text handling as BertTokenizer(do_lower_case=False, strip_accents=False).
    tok = Tokenizer(models.WordPiece(vocab, unk_token=UNK) if vocab else models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=False, lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def train_pieces(texts: list, vocab_size: int = VOCAB_SIZE) -> list:
    """Learned WordPiece pieces, specials excluded, in the trainer's order."""
    tok = _tokenizer()
    # The trainer numbers "##x" pieces in hash-map order, and ties between equally frequent
    # merges go to the lower ids, so the result changes from run to run. Handing it every
    # "##x" up front as a "special token" fixes those ids, and with them the whole result.
    inner = sorted({"##" + ch for text in texts for word, _ in tok.pre_tokenizer.pre_tokenize_str(text)
                    for ch in word[1:]})
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size - RESERVED, min_frequency=1,
                                        special_tokens=inner, show_progress=False,
                                        continuing_subword_prefix="##")
    tok.train_from_iterator(texts, trainer)
    pieces = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return [p for p, _ in pieces if p not in SPECIAL_IDS]


def vocab_lines(pieces: list) -> list:
    """The full vocab.txt: reserved lines with the special ids at their exact places, then the pieces."""
    lines = [f"[unused{i}]" for i in range(RESERVED)]
    for token, i in SPECIAL_IDS.items():
        lines[i] = token
    return lines + pieces


def build_vocab(vocab_size: int = VOCAB_SIZE) -> list:
    return vocab_lines(train_pieces(cover_texts(), vocab_size))
