"""Scene descriptions in English, German, French and Turkish.

Three frames, each realised with the grammar of its language:
  list      "The picture shows a small red cube on the left and a blue ball at the top."
            (German accusative, Turkish existential "... var")
  exist     one-object scenes: "There is ..." (German nominative after a fronted position)
  relation  2+ objects, each new object placed relative to the previous one:
            "The small red cube is above the blue ball and the green cone is below the blue ball."
            (German nominative + dative, French "de" contractions, Turkish genitive + possessive)
Objects are always named in reading order, so a caption is a function of the scene,
the frame and which attributes are left out ("omit"; MMT sources leave some out).
"""

from . import morph as m
from .scenes import COLOURS, GRID, SHAPES, SIZES, Obj

LANGS = ("en", "de", "fr", "tr")
FRAMES = ("list", "exist", "relation")


# German and French nouns: (singular, plural, gender). Turkish: (stem, stem before a vowel).
SHAPE_WORDS = {
    "cube": {"en": "cube", "de": ("Würfel", "Würfel", "m"), "fr": ("cube", "cubes", "m"), "tr": ("küp", None)},
    "ball": {"en": "ball", "de": ("Kugel", "Kugeln", "f"), "fr": ("boule", "boules", "f"), "tr": ("top", None)},
    "cone": {"en": "cone", "de": ("Kegel", "Kegel", "m"), "fr": ("cône", "cônes", "m"), "tr": ("koni", None)},
    "cylinder": {"en": "cylinder", "de": ("Zylinder", "Zylinder", "m"), "fr": ("cylindre", "cylindres", "m"),
                 "tr": ("silindir", None)},
    "pyramid": {"en": "pyramid", "de": ("Pyramide", "Pyramiden", "f"), "fr": ("pyramide", "pyramides", "f"),
                "tr": ("piramit", "piramid")},
    "ring": {"en": "ring", "de": ("Ring", "Ringe", "m"), "fr": ("anneau", "anneaux", "m"), "tr": ("halka", None)},
    "star": {"en": "star", "de": ("Stern", "Sterne", "m"), "fr": ("étoile", "étoiles", "f"), "tr": ("yıldız", None)},
    "triangle": {"en": "triangle", "de": ("Dreieck", "Dreiecke", "n"), "fr": ("triangle", "triangles", "m"),
                 "tr": ("üçgen", None)},
    "egg": {"en": "egg", "de": ("Ei", "Eier", "n"), "fr": ("œuf", "œufs", "m"), "tr": ("yumurta", None)},
}
COLOUR_WORDS = {
    "red": {"en": "red", "de": "rot", "fr": m.fr_adj_forms("rouge"), "tr": "kırmızı"},
    "blue": {"en": "blue", "de": "blau", "fr": m.fr_adj_forms("bleu"), "tr": "mavi"},
    "green": {"en": "green", "de": "grün", "fr": m.fr_adj_forms("vert"), "tr": "yeşil"},
    "yellow": {"en": "yellow", "de": "gelb", "fr": m.fr_adj_forms("jaune"), "tr": "sarı"},
    "black": {"en": "black", "de": "schwarz", "fr": m.fr_adj_forms("noir"), "tr": "siyah"},
    "white": {"en": "white", "de": "weiß", "fr": m.fr_adj_forms("blanc", "blanche"), "tr": "beyaz"},
    "brown": {"en": "brown", "de": "braun", "fr": m.fr_adj_forms("brun"), "tr": "kahverengi"},
    "grey": {"en": "grey", "de": "grau", "fr": m.fr_adj_forms("gris"), "tr": "gri"},
}
# French size adjectives stand before the noun, colours after it.
SIZE_WORDS = {
    "small": {"en": "small", "de": "klein", "fr": m.fr_adj_forms("petit"), "tr": "küçük"},
    "large": {"en": "large", "de": "groß", "fr": m.fr_adj_forms("grand"), "tr": "büyük"},
}
assert set(SHAPE_WORDS) == set(SHAPES) and set(COLOURS) == set(COLOUR_WORDS) and set(SIZES) == set(SIZE_WORDS)

_TR_CORNER = {"top_left": "sol üst", "top_right": "sağ üst", "bottom_left": "sol alt", "bottom_right": "sağ alt"}
POSITION_WORDS = {
    "en": {"top_left": "in the top left corner", "top": "at the top", "top_right": "in the top right corner",
           "left": "on the left", "middle": "in the middle", "right": "on the right",
           "bottom_left": "in the bottom left corner", "bottom": "at the bottom",
           "bottom_right": "in the bottom right corner"},
    "de": {"top_left": "oben links", "top": "oben", "top_right": "oben rechts", "left": "links",
           "middle": "in der Mitte", "right": "rechts", "bottom_left": "unten links", "bottom": "unten",
           "bottom_right": "unten rechts"},
    "fr": {"top_left": "en haut à gauche", "top": "en haut", "top_right": "en haut à droite", "left": "à gauche",
           "middle": "au centre", "right": "à droite", "bottom_left": "en bas à gauche", "bottom": "en bas",
           "bottom_right": "en bas à droite"},
    # Turkish positions are locatives, so their suffixes follow vowel harmony.
    "tr": {**{k: v + " " + m.tr_locative("köşe") for k, v in _TR_CORNER.items()},
           "top": m.tr_locative("üst"), "left": m.tr_locative("sol"), "middle": m.tr_locative("orta"),
           "right": m.tr_locative("sağ"), "bottom": m.tr_locative("alt")},
}
_TR_RELATION_STEM = {"left": "sol", "right": "sağ", "above": "üst", "below": "alt"}
_DE_RELATION = {"left": "links", "right": "rechts", "above": "über", "below": "unter"}
_FR_RELATION = {"left": "à gauche", "right": "à droite", "above": "au-dessus", "below": "sous"}
_EN_RELATION = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
_AND = {"en": "and", "de": "und", "fr": "et", "tr": "ve"}


def relation(a: Obj, b: Obj) -> str:
    """Where a lies relative to b; the larger grid offset wins, columns on a tie."""
    (ra, ca), (rb, cb) = divmod(a.cell, GRID), divmod(b.cell, GRID)
    if abs(ca - cb) >= abs(ra - rb):
        return "left" if ca < cb else "right"
    return "above" if ra < rb else "below"


def _join(items: list, lang: str) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + f" {_AND[lang]} " + items[-1]


def _capitalize(text: str, lang: str) -> str:
    return m.tr_capitalize(text) if lang == "tr" else text[0].upper() + text[1:]


def _attrs(obj: Obj, omit: frozenset) -> tuple:
    size = None if "size" in omit else SIZE_WORDS[obj.size]
    colour = None if "colour" in omit else COLOUR_WORDS[obj.colour]
    return size, colour


def noun_phrase(obj: Obj, lang: str, det: str, case: str = "nom", omit: frozenset = frozenset()) -> str:
    """det: "indef" or "def"; case: nom/acc/dat for German, "de" for French after "de",
    "gen" for Turkish genitive."""
    size, colour = _attrs(obj, omit)
    adjs = [a[lang] for a in (size, colour) if a is not None]
    noun = SHAPE_WORDS[obj.shape][lang]
    if lang == "en":
        words = " ".join(adjs + [noun])
        article = "the" if det == "def" else "an" if words[0] in "aeio" else "a"
        return article + " " + words
    if lang == "de":
        return m.de_np(noun, adjs, det, case)
    if lang == "fr":
        before = [size["fr"]] if size else []
        after = [colour["fr"]] if colour else []
        return m.fr_np(noun, before, after, det, de=case == "de")
    head = m.tr_genitive(noun) if case == "gen" else noun[0]
    # Turkish puts "bir" between the adjectives and the noun: "küçük kırmızı bir küp".
    return " ".join(adjs + (["bir"] if det == "indef" else []) + [head])


def _list(scene: tuple, lang: str, omits: list) -> str:
    pos = POSITION_WORDS[lang]
    if lang == "en":
        items = [f"{noun_phrase(o, lang, 'indef', omit=w)} {pos[o.position]}" for o, w in zip(scene, omits)]
        return f"The picture shows {_join(items, lang)}."
    if lang == "de":
        items = [f"{pos[o.position]} {noun_phrase(o, lang, 'indef', 'acc', w)}" for o, w in zip(scene, omits)]
        return f"Das Bild zeigt {_join(items, lang)}."
    if lang == "fr":
        items = [f"{noun_phrase(o, lang, 'indef', omit=w)} {pos[o.position]}" for o, w in zip(scene, omits)]
        return f"L'image montre {_join(items, lang)}."
    items = [f"{pos[o.position]} {noun_phrase(o, lang, 'indef', omit=w)}" for o, w in zip(scene, omits)]
    return f"{m.tr_locative('Resim')} {_join(items, lang)} var."


def _exist(obj: Obj, lang: str, omit: frozenset) -> str:
    pos = POSITION_WORDS[lang][obj.position]
    if lang == "en":
        return f"There is {noun_phrase(obj, lang, 'indef', omit=omit)} {pos}."
    if lang == "de":
        return _capitalize(f"{pos} befindet sich {noun_phrase(obj, lang, 'indef', 'nom', omit)}.", lang)
    if lang == "fr":
        return f"Il y a {noun_phrase(obj, lang, 'indef', omit=omit)} {pos}."
    return _capitalize(f"{pos} {noun_phrase(obj, lang, 'indef', omit=omit)} duruyor.", lang)


def _clause(a: Obj, b: Obj, lang: str, omit_a: frozenset, omit_b: frozenset) -> str:
    rel = relation(a, b)
    if lang == "en":
        return f"{noun_phrase(a, lang, 'def', omit=omit_a)} is {_EN_RELATION[rel]} {noun_phrase(b, lang, 'def', omit=omit_b)}"
    if lang == "de":
        anchor = noun_phrase(b, lang, "def", "dat", omit_b)
        where = f"{_DE_RELATION[rel]} {m.de_after_von(anchor)}" if rel in ("left", "right") else f"{_DE_RELATION[rel]} {anchor}"
        return f"{noun_phrase(a, lang, 'def', 'nom', omit_a)} ist {where}"
    if lang == "fr":
        anchor = noun_phrase(b, lang, "def", "nom" if rel == "below" else "de", omit_b)
        return f"{noun_phrase(a, lang, 'def', omit=omit_a)} est {_FR_RELATION[rel]} {anchor}"
    where = m.tr_possessive_locative((_TR_RELATION_STEM[rel], None))
    return f"{noun_phrase(a, lang, 'def', omit=omit_a)} {noun_phrase(b, lang, 'def', 'gen', omit_b)} {where}"


def _relation(scene: tuple, lang: str, omits: list) -> str:
    # The first clause places object 1 against object 2; every later clause places the
    # next new object against the previous one, so all four relations occur.
    clauses = [_clause(scene[0], scene[1], lang, omits[0], omits[1])]
    clauses += [_clause(scene[i + 1], scene[i], lang, omits[i + 1], omits[i]) for i in range(1, len(scene) - 1)]
    return _capitalize(_join(clauses, lang), lang) + "."


def caption_frames(scene: tuple) -> tuple:
    """The frames a scene's captions use: list, plus exist (1 object) or relation (2+)."""
    return ("list", "exist") if len(scene) == 1 else ("list", "relation")


def describe(scene: tuple, lang: str, frame: str, omits: list | None = None) -> str:
    """One sentence for a scene. omits[i] is the set of attributes ("colour", "size")
    to leave out for object i; None states everything."""
    omits = [frozenset(w) for w in omits] if omits is not None else [frozenset()] * len(scene)
    if frame == "list":
        return _list(scene, lang, omits)
    if frame == "exist":
        if len(scene) != 1:
            raise ValueError(f"frame 'exist' describes one-object scenes; this scene has {len(scene)}")
        return _exist(scene[0], lang, omits[0])
    if frame == "relation":
        if len(scene) < 2:
            raise ValueError("frame 'relation' needs at least two objects")
        return _relation(scene, lang, omits)
    raise ValueError(f"unknown frame {frame!r}; known: {FRAMES}")


def cover_scenes():
    """Scenes whose captions, under every frame and omission, use every word form the
    captions can produce (used to build a vocabulary that does not depend on the sample)."""
    for shape in SHAPES:
        for colour in COLOURS:
            for size in SIZES:
                obj = Obj(shape, colour, size, 4)
                yield (obj,)
                yield (obj, Obj(shape, colour, size, 5))
    for cell in range(GRID * GRID):
        yield (Obj("cube", "red", "small", cell),)
    # above, then below; then right (a top-right object against a lower-left one).
    yield tuple(Obj("cube", "red", "small", c) for c in (1, 4, 7))
    yield (Obj("cube", "red", "small", 2), Obj("cube", "red", "small", 3))


def cover_captions(lang: str):
    for scene in cover_scenes():
        for frame in caption_frames(scene):
            for omit in ((), ("colour",), ("size",), ("colour", "size")):
                yield describe(scene, lang, frame, [omit] * len(scene))
