"""Inflection rules shared by ToyWorld's scene and sentence grammars.

German article and adjective declension, French article/adjective agreement with
elision and contraction, Turkish suffixes with vowel harmony. Nouns and adjectives
are plain tuples or dicts defined next to the grammars that use them.
"""

# ---------------------------------------------------------------- German
# Gender keys: "m", "f", "n"; "pl" stands for any plural (German plural has no gender).
DE_ARTICLE = {
    ("def", "nom"): {"m": "der", "f": "die", "n": "das", "pl": "die"},
    ("def", "acc"): {"m": "den", "f": "die", "n": "das", "pl": "die"},
    ("def", "dat"): {"m": "dem", "f": "der", "n": "dem", "pl": "den"},
    ("indef", "nom"): {"m": "ein", "f": "eine", "n": "ein", "pl": ""},
    ("indef", "acc"): {"m": "einen", "f": "eine", "n": "ein", "pl": ""},
    ("indef", "dat"): {"m": "einem", "f": "einer", "n": "einem", "pl": ""},
}

# Adjective endings after the definite article ("weak") and after ein/eine or no article
# ("mixed"; with no article only plurals occur here, whose strong endings coincide).
DE_WEAK = {
    "nom": {"m": "e", "f": "e", "n": "e", "pl": "en"},
    "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"},
    "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"},
}
DE_MIXED = {
    "nom": {"m": "er", "f": "e", "n": "es", "pl": "e"},
    "acc": {"m": "en", "f": "e", "n": "es", "pl": "e"},
    "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"},
}


def de_adjective(stem: str, ending: str) -> str:
    # "müde" + "er" is "müder", not "müdeer".
    if stem.endswith("e") and ending.startswith("e"):
        return stem + ending[1:]
    return stem + ending


def de_np(noun: tuple, adjectives: list, det: str, case: str, plural: bool = False) -> str:
    """German noun phrase; noun = (singular, plural, gender)."""
    singular, plural_form, gender = noun
    key = "pl" if plural else gender
    table = DE_WEAK if det == "def" else DE_MIXED
    words = [DE_ARTICLE[det, case][key]]
    words += [de_adjective(a, table[case][key]) for a in adjectives]
    words.append(plural_form if plural else singular)
    return " ".join(w for w in words if w)


def de_after_von(np: str) -> str:
    # "von dem" must contract to "vom": "links vom Würfel", never "links von dem Würfel".
    return "vom" + np[3:] if np.startswith("dem ") else "von " + np


# ---------------------------------------------------------------- French
FR_VOWELS = "aeiouyàâéèêëîïôœh"  # h here is always h muet (homme, hiver)


def fr_starts_with_vowel(word: str) -> bool:
    return word[0].lower() in FR_VOWELS


def fr_adj_forms(ms: str, fs: str | None = None, mp: str | None = None, fp: str | None = None) -> dict:
    """An adjective's four forms; the regular ones (vert, verte, verts, vertes) need only ms."""
    fs = fs or (ms if ms.endswith("e") else ms + "e")
    return {"ms": ms, "fs": fs, "mp": mp or (ms if ms[-1] in "sx" else ms + "s"), "fp": fp or fs + "s"}


def fr_adjective(adj: dict, gender: str, plural: bool, before_vowel: bool = False) -> str:
    """adj has forms ms, fs, mp, fp and optionally ms_vowel ("vieil" before "homme")."""
    if gender == "m" and not plural and before_vowel and "ms_vowel" in adj:
        return adj["ms_vowel"]
    return adj[("m" if gender == "m" else "f") + ("p" if plural else "s")]


def fr_np(noun: tuple, before: list, after: list, det: str, plural: bool = False, de: bool = False) -> str:
    """French noun phrase; noun = (singular, plural, gender).

    before/after: adjectives placed before (petit, grand, jeune, vieux) and after the noun
    (colours, heureux). de=True builds the phrase after the preposition "de", which
    contracts with the article (du, des) or keeps it (de la, de l').
    """
    singular, plural_form, gender = noun
    head = plural_form if plural else singular
    pre = []
    for i, adj in enumerate(before):
        nxt = before[i + 1]["ms"] if i + 1 < len(before) else head
        pre.append(fr_adjective(adj, gender, plural, fr_starts_with_vowel(nxt)))
    post = [fr_adjective(adj, gender, plural) for adj in after]
    body = " ".join(pre + [head] + post)
    if det == "indef":
        if de:
            raise ValueError("fr_np: 'de' + indefinite article is not used by the ToyWorld grammars")
        return ("des" if plural else "un" if gender == "m" else "une") + " " + body
    if plural:
        article = "des" if de else "les"
        return article + " " + body
    if fr_starts_with_vowel(body):
        return ("de l'" if de else "l'") + body
    if gender == "m":
        return ("du " if de else "le ") + body
    return ("de la " if de else "la ") + body


# ---------------------------------------------------------------- Turkish
TR_BACK = "aıou"
TR_FRONT = "eiöü"
TR_ROUNDED = "ouöü"
TR_VOWELS = TR_BACK + TR_FRONT
# A suffix's initial d becomes t after these ("fıstıkçı şahap").
TR_VOICELESS = "çfhkpsşt"


def tr_last_vowel(word: str) -> str:
    for ch in reversed(word.lower()):
        if ch in TR_VOWELS:
            return ch
    raise ValueError(f"Turkish word {word!r} has no vowel")


def tr_a(word: str) -> str:
    """Two-way harmony vowel (a/e) a suffix takes after word."""
    return "a" if tr_last_vowel(word) in TR_BACK else "e"


def tr_i(word: str) -> str:
    """Four-way harmony vowel (ı/i/u/ü) a suffix takes after word."""
    v = tr_last_vowel(word)
    if v in TR_BACK:
        return "u" if v in TR_ROUNDED else "ı"
    return "ü" if v in TR_ROUNDED else "i"


def tr_locative(word: str) -> str:
    d = "t" if word[-1] in TR_VOICELESS else "d"
    return word + d + tr_a(word)


def tr_plural(word: str) -> str:
    return word + "l" + tr_a(word) + "r"


def _vowel_stem(noun: tuple) -> str:
    # noun = (stem, stem before a vowel-initial suffix): köpek -> köpeğ, kitap -> kitab, resim -> resm.
    return noun[1] or noun[0]


def tr_accusative(noun: tuple) -> str:
    stem = noun[0]
    if stem[-1] in TR_VOWELS:
        return stem + "y" + tr_i(stem)
    return _vowel_stem(noun) + tr_i(stem)


def tr_genitive(noun: tuple) -> str:
    stem = noun[0]
    if stem[-1] in TR_VOWELS:
        return stem + "n" + tr_i(stem) + "n"
    return _vowel_stem(noun) + tr_i(stem) + "n"


def tr_possessive_locative(noun: tuple) -> str:
    """Third-person possessive then locative: sol -> solunda ("at its left"), kenar -> kenarında."""
    stem = noun[0]
    if stem[-1] in TR_VOWELS:
        poss = stem + "s" + tr_i(stem)
    else:
        poss = _vowel_stem(noun) + tr_i(stem)
    return poss + "nd" + tr_a(poss)


def tr_capitalize(text: str) -> str:
    # Turkish dotted/dotless i: "inek" -> "İnek", "ılık" -> "Ilık"; str.capitalize gets both wrong.
    first = {"i": "İ", "ı": "I"}.get(text[0], text[0].upper())
    return first + text[1:]
