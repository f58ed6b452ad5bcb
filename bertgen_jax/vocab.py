"""Special-token ids shared by the data pipeline, the model and decoding.

BERTGEN does not append new tokens: it overwrites mBERT's `[unusedN]` rows, so
these ids hold for the real mBERT vocabulary and for ToyWorld's vocabulary alike.
"""

PAD = "[PAD]"
STOP = "[STOP]"
UNK = "[UNK]"
CLS = "[CLS]"
SEP = "[SEP]"
MASK = "[MASK]"

# Target-language tags: `[TO_X]` names the language to generate.
LANG_TAGS = {"en": "[TO_EN]", "de": "[TO_DE]", "fr": "[TO_FR]", "cs": "[TO_CS]", "tr": "[TO_TU]"}

SPECIAL_IDS = {
    PAD: 0,
    STOP: 1,
    "[TO_EN]": 16,
    "[TO_DE]": 17,
    "[TO_FR]": 18,
    "[TO_CS]": 19,
    "[TO_TU]": 20,
    UNK: 100,
    CLS: 101,
    SEP: 102,
    MASK: 103,
}

PAD_ID = SPECIAL_IDS[PAD]
STOP_ID = SPECIAL_IDS[STOP]
UNK_ID = SPECIAL_IDS[UNK]
CLS_ID = SPECIAL_IDS[CLS]
SEP_ID = SPECIAL_IDS[SEP]
MASK_ID = SPECIAL_IDS[MASK]


def lang_tag_id(lang: str) -> int:
    """Id of the `[TO_X]` tag for a target language code ('en', 'de', 'fr', 'cs', 'tr')."""
    if lang not in LANG_TAGS:
        raise ValueError(f"unknown target language {lang!r}; known: {sorted(LANG_TAGS)}")
    return SPECIAL_IDS[LANG_TAGS[lang]]


def write_vocab_with_tags(src: str, dst: str) -> None:
    """Copy an mBERT-style vocab.txt, writing BERTGEN's tokens over its `[unusedN]` lines.

    The tags keep the original's ids, so a BERTGEN checkpoint's embedding rows line up.
    A line that is neither `[unusedN]` nor already the wanted token is an error: the file is
    then not an mBERT-layout vocabulary and the ids would silently mean other words.
    """
    with open(src, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for token, idx in SPECIAL_IDS.items():
        if idx >= len(lines):
            raise ValueError(f"{src}: has {len(lines)} lines, too few for {token} at line {idx}")
        have = lines[idx]
        if have != token and not (have.startswith("[unused") and have.endswith("]")):
            raise ValueError(f"{src}, line {idx + 1}: expected [unusedN] or {token}, found {have!r}")
        lines[idx] = token
    with open(dst, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def load_tokenizer(vocab_file: str):
    """mBERT's tokenization (cased, accents kept) over a local vocab.txt, with BERTGEN's tags
    kept whole. `BertTokenizerFast(vocab_file=...)` would silently ignore the file in transformers 5."""
    from transformers import BertTokenizer
    tags = [t for t in SPECIAL_IDS if t not in (PAD, UNK, CLS, SEP, MASK)]
    return BertTokenizer(vocab_file, do_lower_case=False, strip_accents=False,
                         tokenize_chinese_chars=True, never_split=tags,
                         additional_special_tokens=tags)
