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
