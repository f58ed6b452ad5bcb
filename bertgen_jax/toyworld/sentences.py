"""ToyWorld's text-only sentence family for MT: people and animals doing things, somewhere, sometime.

"In the morning, the young woman reads a book in the library." and its German, French
and Turkish translations. Its vocabulary barely overlaps the scene captions', as
IWSLT/SETIMES text differs from Multi30k's. Word order follows each language: German
verb-second (a fronted time inverts subject and verb), French adjectives before or
after the noun, Turkish subject-object-verb with case suffixes on places and definite
objects.
"""

from dataclasses import astuple, dataclass, replace

import numpy as np

from . import morph as m

# name: (EN sg, EN pl, DE (sg, pl, gender), FR (sg, pl, gender), TR (stem, stem before a vowel))
PEOPLE = {
    "man": ("man", "men", ("Mann", "Männer", "m"), ("homme", "hommes", "m"), ("adam", None)),
    "woman": ("woman", "women", ("Frau", "Frauen", "f"), ("femme", "femmes", "f"), ("kadın", None)),
    "child": ("child", "children", ("Kind", "Kinder", "n"), ("enfant", "enfants", "m"), ("çocuk", "çocuğ")),
    "girl": ("girl", "girls", ("Mädchen", "Mädchen", "n"), ("fille", "filles", "f"), ("kız", None)),
    "boy": ("boy", "boys", ("Junge", "Jungen", "m"), ("garçon", "garçons", "m"), ("oğlan", None)),
    "teacher": ("teacher", "teachers", ("Lehrer", "Lehrer", "m"), ("professeur", "professeurs", "m"),
                ("öğretmen", None)),
    "doctor": ("doctor", "doctors", ("Arzt", "Ärzte", "m"), ("médecin", "médecins", "m"), ("doktor", None)),
    "farmer": ("farmer", "farmers", ("Bauer", "Bauern", "m"), ("fermier", "fermiers", "m"), ("çiftçi", None)),
    "student": ("student", "students", ("Student", "Studenten", "m"), ("étudiant", "étudiants", "m"),
                ("öğrenci", None)),
    "cook": ("cook", "cooks", ("Koch", "Köche", "m"), ("cuisinier", "cuisiniers", "m"), ("aşçı", None)),
}
ANIMALS = {
    "dog": ("dog", "dogs", ("Hund", "Hunde", "m"), ("chien", "chiens", "m"), ("köpek", "köpeğ")),
    "cat": ("cat", "cats", ("Katze", "Katzen", "f"), ("chat", "chats", "m"), ("kedi", None)),
    "horse": ("horse", "horses", ("Pferd", "Pferde", "n"), ("cheval", "chevaux", "m"), ("at", None)),
    "bird": ("bird", "birds", ("Vogel", "Vögel", "m"), ("oiseau", "oiseaux", "m"), ("kuş", None)),
    "fish": ("fish", "fish", ("Fisch", "Fische", "m"), ("poisson", "poissons", "m"), ("balık", "balığ")),
    "cow": ("cow", "cows", ("Kuh", "Kühe", "f"), ("vache", "vaches", "f"), ("inek", "ineğ")),
    "sheep": ("sheep", "sheep", ("Schaf", "Schafe", "n"), ("mouton", "moutons", "m"), ("koyun", None)),
    "mouse": ("mouse", "mice", ("Maus", "Mäuse", "f"), ("souris", "souris", "f"), ("fare", None)),
}
# Things are only ever objects, in the singular. Value: (EN, DE, FR, TR, kind).
THINGS = {
    "book": ("book", ("Buch", "Bücher", "n"), ("livre", "livres", "m"), ("kitap", "kitab"), "text"),
    "letter": ("letter", ("Brief", "Briefe", "m"), ("lettre", "lettres", "f"), ("mektup", "mektub"), "text"),
    "newspaper": ("newspaper", ("Zeitung", "Zeitungen", "f"), ("journal", "journaux", "m"), ("gazete", None), "text"),
    "apple": ("apple", ("Apfel", "Äpfel", "m"), ("pomme", "pommes", "f"), ("elma", None), "food"),
    "sandwich": ("sandwich", ("Sandwich", "Sandwiches", "n"), ("sandwich", "sandwichs", "m"), ("sandviç", None), "food"),
    "cake": ("cake", ("Kuchen", "Kuchen", "m"), ("gâteau", "gâteaux", "m"), ("pasta", None), "food"),
    "banana": ("banana", ("Banane", "Bananen", "f"), ("banane", "bananes", "f"), ("muz", None), "food"),
    "bag": ("bag", ("Tasche", "Taschen", "f"), ("sac", "sacs", "m"), ("çanta", None), "item"),
    "box": ("box", ("Kiste", "Kisten", "f"), ("boîte", "boîtes", "f"), ("kutu", None), "item"),
    "ball": ("ball", ("Ball", "Bälle", "m"), ("ballon", "ballons", "m"), ("top", None), "item"),
    "hat": ("hat", ("Hut", "Hüte", "m"), ("chapeau", "chapeaux", "m"), ("şapka", None), "item"),
    "key": ("key", ("Schlüssel", "Schlüssel", "m"), ("clé", "clés", "f"), ("anahtar", None), "item"),
    "flower": ("flower", ("Blume", "Blumen", "f"), ("fleur", "fleurs", "f"), ("çiçek", "çiçeğ"), "item"),
    "picture": ("picture", ("Bild", "Bilder", "n"), ("tableau", "tableaux", "m"), ("resim", "resm"), "art"),
    "car": ("car", ("Auto", "Autos", "n"), ("voiture", "voitures", "f"), ("araba", None), "vehicle"),
    "bicycle": ("bicycle", ("Fahrrad", "Fahrräder", "n"), ("vélo", "vélos", "m"), ("bisiklet", None), "vehicle"),
}
# name: (EN 3sg, EN 3pl, DE 3sg, DE 3pl, FR 3sg, FR 3pl, TR present progressive 3sg,
#        who can do it, what it takes as object: None for intransitive)
VERBS = {
    "see": ("sees", "see", "sieht", "sehen", "voit", "voient", "görüyor", "any", ("text", "food", "item", "art", "vehicle", "animal")),
    "eat": ("eats", "eat", "isst", "essen", "mange", "mangent", "yiyor", "any", ("food",)),
    "read": ("reads", "read", "liest", "lesen", "lit", "lisent", "okuyor", "person", ("text",)),
    "buy": ("buys", "buy", "kauft", "kaufen", "achète", "achètent", "satın alıyor", "person", ("text", "food", "item", "art", "vehicle")),
    "carry": ("carries", "carry", "trägt", "tragen", "porte", "portent", "taşıyor", "person", ("text", "food", "item")),
    "draw": ("draws", "draw", "zeichnet", "zeichnen", "dessine", "dessinent", "çiziyor", "person", ("item", "vehicle", "animal")),
    "find": ("finds", "find", "findet", "finden", "trouve", "trouvent", "buluyor", "any", ("item", "text")),
    "seek": ("looks for", "look for", "sucht", "suchen", "cherche", "cherchent", "arıyor", "any", ("item", "animal")),
    "wash": ("washes", "wash", "wäscht", "waschen", "lave", "lavent", "yıkıyor", "person", ("vehicle", "animal")),
    "feed": ("feeds", "feed", "füttert", "füttern", "nourrit", "nourrissent", "besliyor", "person", ("animal",)),
    "sleep": ("sleeps", "sleep", "schläft", "schlafen", "dort", "dorment", "uyuyor", "any", None),
    "run": ("runs", "run", "läuft", "laufen", "court", "courent", "koşuyor", "any", None),
    "play": ("plays", "play", "spielt", "spielen", "joue", "jouent", "oynuyor", "any", None),
    "sing": ("sings", "sing", "singt", "singen", "chante", "chantent", "şarkı söylüyor", "person", None),
    "wait": ("waits", "wait", "wartet", "warten", "attend", "attendent", "bekliyor", "any", None),
    "work": ("works", "work", "arbeitet", "arbeiten", "travaille", "travaillent", "çalışıyor", "person", None),
    "swim": ("swims", "swim", "schwimmt", "schwimmen", "nage", "nagent", "yüzüyor", "any", None),
    "dance": ("dances", "dance", "tanzt", "tanzen", "danse", "dansent", "dans ediyor", "person", None),
    "laugh": ("laughs", "laugh", "lacht", "lachen", "rit", "rient", "gülüyor", "person", None),
}
# name: (EN, DE, FR, TR). Turkish places are built from stems so their suffixes harmonise.
PLACES = {
    "park": ("in the park", "im Park", "dans le parc", m.tr_locative("park")),
    "garden": ("in the garden", "im Garten", "dans le jardin", m.tr_locative("bahçe")),
    "kitchen": ("in the kitchen", "in der Küche", "dans la cuisine", m.tr_locative("mutfak")),
    "school": ("at school", "in der Schule", "à l'école", m.tr_locative("okul")),
    "beach": ("on the beach", "am Strand", "sur la plage", m.tr_locative("plaj")),
    "forest": ("in the forest", "im Wald", "dans la forêt", m.tr_locative("orman")),
    "city": ("in the city", "in der Stadt", "en ville", m.tr_locative("şehir")),
    "home": ("at home", "zu Hause", "à la maison", m.tr_locative("ev")),
    "street": ("on the street", "auf der Straße", "dans la rue", m.tr_locative("sokak")),
    "river": ("by the river", "am Fluss", "au bord de la rivière", "nehir " + m.tr_possessive_locative(("kenar", None))),
    "library": ("in the library", "in der Bibliothek", "à la bibliothèque", m.tr_locative("kütüphane")),
    "market": ("at the market", "auf dem Markt", "au marché", m.tr_locative("pazar")),
    "station": ("at the station", "am Bahnhof", "à la gare", m.tr_locative("istasyon")),
    "village": ("in the village", "im Dorf", "au village", m.tr_locative("köy")),
    "office": ("in the office", "im Büro", "au bureau", m.tr_locative("ofis")),
    "lake": ("in the lake", "im See", "dans le lac", m.tr_locative("göl")),
}
# Swimming happens only by water, and only swimming happens in the lake.
WATER = ("beach", "river", "lake")
TIMES = {
    "morning": ("in the morning", "am Morgen", "le matin", "sabah"),
    "evening": ("in the evening", "am Abend", "le soir", "akşam"),
    "night": ("at night", "in der Nacht", "la nuit", "gece"),
    "every_day": ("every day", "jeden Tag", "chaque jour", "her gün"),
    "today": ("today", "heute", "aujourd'hui", "bugün"),
    "now": ("now", "jetzt", "maintenant", "şimdi"),
    "noon": ("at noon", "mittags", "à midi", "öğlen"),
    "weekend": ("at the weekend", "am Wochenende", "le week-end", "hafta " + m.tr_possessive_locative(("son", None))),
    "winter": ("in winter", "im Winter", "en hiver", "kışın"),
    "summer": ("in summer", "im Sommer", "en été", "yazın"),
}
# name: (EN, DE stem, FR forms, FR before the noun?, TR)
ADJECTIVES = {
    "young": ("young", "jung", m.fr_adj_forms("jeune"), True, "genç"),
    "old": ("old", "alt", {**m.fr_adj_forms("vieux", "vieille", "vieux"), "ms_vowel": "vieil"}, True, "yaşlı"),
    "happy": ("happy", "glücklich", m.fr_adj_forms("heureux", "heureuse", "heureux"), False, "mutlu"),
    "tired": ("tired", "müde", m.fr_adj_forms("fatigué"), False, "yorgun"),
    "hungry": ("hungry", "hungrig", m.fr_adj_forms("affamé"), False, "aç"),
}


@dataclass(frozen=True)
class Sentence:
    """One meaning; realise() gives it in each language."""
    subject: str
    plural: bool
    subject_det: str  # "def" or "indef"; plurals are always definite
    adjective: str | None
    verb: str
    obj: str | None
    obj_det: str
    place: str | None
    time: str | None
    front_time: bool  # EN/DE/FR put the time first; German then inverts verb and subject

    def meaning(self) -> tuple:
        # Fronting is style, not content: splits are kept disjoint on everything else.
        return astuple(replace(self, front_time=False))


def _noun(name: str) -> tuple:
    return PEOPLE.get(name) or ANIMALS[name]


def _object_entry(name: str) -> tuple:
    """(EN, DE, FR, TR) of an object, animal or thing."""
    if name in THINGS:
        return THINGS[name][:4]
    en, _, de, fr, tr = ANIMALS[name]
    return en, de, fr, tr


def _en(s: Sentence) -> str:
    en_sg, en_pl = _noun(s.subject)[:2]
    words = ([ADJECTIVES[s.adjective][0]] if s.adjective else []) + [en_pl if s.plural else en_sg]
    if s.plural or s.subject_det == "def":
        subject = "the " + " ".join(words)
    else:
        subject = ("an " if words[0][0] in "aeio" else "a ") + " ".join(words)
    parts = [subject, VERBS[s.verb][1 if s.plural else 0]]
    if s.obj:
        noun = _object_entry(s.obj)[0]
        parts.append(("the " if s.obj_det == "def" else "an " if noun[0] in "aeio" else "a ") + noun)
    if s.place:
        parts.append(PLACES[s.place][0])
    if s.time and not s.front_time:
        parts.append(TIMES[s.time][0])
    text = " ".join(parts)
    if s.time and s.front_time:
        text = TIMES[s.time][0] + ", " + text
    return text[0].upper() + text[1:] + "."


def _de(s: Sentence) -> str:
    adjs = [ADJECTIVES[s.adjective][1]] if s.adjective else []
    subject = m.de_np(_noun(s.subject)[2], adjs, s.subject_det, "nom", s.plural)
    verb = VERBS[s.verb][3 if s.plural else 2]
    rest = ([PLACES[s.place][1]] if s.place else [])
    if s.obj:
        rest.append(m.de_np(_object_entry(s.obj)[1], [], s.obj_det, "acc"))
    if s.time and s.front_time:  # verb second: "Am Morgen liest die Frau ..."
        words = [TIMES[s.time][1], verb, subject] + rest
    else:
        words = [subject, verb] + ([TIMES[s.time][1]] if s.time else []) + rest
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _fr(s: Sentence) -> str:
    before, after = [], []
    if s.adjective:
        _, _, forms, pre, _ = ADJECTIVES[s.adjective]
        (before if pre else after).append(forms)
    subject = m.fr_np(_noun(s.subject)[3], before, after, s.subject_det, s.plural)
    parts = [subject, VERBS[s.verb][5 if s.plural else 4]]
    if s.obj:
        parts.append(m.fr_np(_object_entry(s.obj)[2], [], [], s.obj_det))
    if s.place:
        parts.append(PLACES[s.place][2])
    if s.time and not s.front_time:
        parts.append(TIMES[s.time][2])
    text = " ".join(parts)
    if s.time and s.front_time:
        text = TIMES[s.time][2] + ", " + text
    return text[0].upper() + text[1:] + "."


def _tr(s: Sentence) -> str:
    stem = _noun(s.subject)[4]
    head = m.tr_plural(stem[0]) if s.plural else stem[0]
    words = ([ADJECTIVES[s.adjective][4]] if s.adjective else [])
    words += (["bir"] if s.subject_det == "indef" and not s.plural else []) + [head]
    if s.time:
        words.append(TIMES[s.time][3])
    if s.place:
        words.append(PLACES[s.place][3])
    if s.obj:
        noun = _object_entry(s.obj)[3]
        # Definite objects take the accusative; indefinite ones stay bare after "bir".
        words += [m.tr_accusative(noun)] if s.obj_det == "def" else ["bir", noun[0]]
    verb = VERBS[s.verb][6]
    # Plural people take -lar on the verb; animals (non-human plurals) usually do not.
    words.append(m.tr_plural(verb) if s.plural and s.subject in PEOPLE else verb)
    return m.tr_capitalize(" ".join(words)) + "."


REALISERS = {"en": _en, "de": _de, "fr": _fr, "tr": _tr}


def realise(s: Sentence, lang: str) -> str:
    return REALISERS[lang](s)


def sample_sentence(rng: np.random.Generator) -> Sentence:
    """A random meaning that respects who can do what, and where."""
    is_person = rng.random() < 0.6
    subject = str(rng.choice(list(PEOPLE if is_person else ANIMALS)))
    verbs = [v for v, e in VERBS.items() if e[7] == "any" or is_person]
    verb = str(rng.choice(verbs))
    obj = None
    if VERBS[verb][8]:
        kinds = VERBS[verb][8]
        objs = [t for t, e in THINGS.items() if e[4] in kinds] + (list(ANIMALS) if "animal" in kinds else [])
        obj = str(rng.choice([o for o in objs if o != subject]))
    places = list(WATER) if verb == "swim" else [p for p in PLACES if p != "lake"]
    plural = bool(rng.random() < 0.3)
    time = str(rng.choice(list(TIMES))) if rng.random() < 0.6 else None
    return Sentence(
        subject=subject,
        plural=plural,
        subject_det="def" if plural or rng.random() < 0.6 else "indef",
        adjective=str(rng.choice(list(ADJECTIVES))) if rng.random() < 0.4 else None,
        verb=verb,
        obj=obj,
        obj_det="def" if rng.random() < 0.5 else "indef",
        place=str(rng.choice(places)) if rng.random() < 0.7 else None,
        time=time,
        front_time=bool(time is not None and rng.random() < 0.4),
    )


def cover_sentences():
    """Meanings that between them use every word form the family can produce
    (used to build a vocabulary that does not depend on the sample)."""
    base = Sentence("man", False, "def", None, "sleep", None, "def", None, None, False)
    for subject in list(PEOPLE) + list(ANIMALS):
        for plural, det in ((False, "def"), (False, "indef"), (True, "def")):
            for adjective in [None] + list(ADJECTIVES):
                for time, front in ((None, False), ("morning", True)):  # capitalised, then not
                    yield replace(base, subject=subject, plural=plural, subject_det=det, adjective=adjective,
                                  time=time, front_time=front)
    for verb, entry in VERBS.items():
        obj = "dog" if entry[8] else None
        for plural in (False, True):
            yield replace(base, verb=verb, obj=obj, plural=plural)
    for obj in list(THINGS) + list(ANIMALS):
        for det in ("def", "indef"):
            yield replace(base, verb="see", obj=obj, obj_det=det)
    for place in PLACES:
        yield replace(base, place=place)
    for time in TIMES:
        for front in (False, True):
            yield replace(base, time=time, front_time=front)
