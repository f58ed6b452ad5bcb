"""ToyWorld: determinism, formats, splits, what the features and sources carry, grammar, vocabulary.

Grammar facts (genders, declension, harmony) are written out here independently of the
generator's own tables, so a wrong table there fails here.
"""

import base64
import collections
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from transformers import BertTokenizer

from bertgen_jax import toyworld
from bertgen_jax.toyworld import captions as toyworld_captions, corpus as toyworld_corpus, sentences as toyworld_sentences
from bertgen_jax.vocab import SPECIAL_IDS

DIM = 32
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tw_seed0")
    toyworld.generate(out, seed=0, scale="tiny", feature_dim=DIM)
    return out


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))


def texts_by_lang(root: Path) -> dict:
    """Every sentence written, per language, from jsonl and MT files alike (each once)."""
    out = collections.defaultdict(list)
    for s in manifest(root)["streams"]:
        if s["format"] == "jsonl":
            rows = read_jsonl(root / s["file"])
            out[s["tgt"]] += [r[s["tgt_field"]] for r in rows]
            if s["src"]:
                out[s["src"]] += [r[s["src_field"]] for r in rows]
        else:
            out[s["src"]] += (root / s["src_file"]).read_text(encoding="utf-8").splitlines()
    return {lang: list(dict.fromkeys(texts)) for lang, texts in out.items()}


def decode_zip_entry(zf: zipfile.ZipFile, name: str) -> dict:
    rec = json.loads(zf.read(name))
    n = rec["num_boxes"]
    arr = {k: np.frombuffer(base64.b64decode(rec[k]), dtype=np.float32).reshape(n, -1)
           for k in ("boxes", "features", "classes")}
    return {**rec, **arr}


def image_rows(root: Path, split: str):
    """(scene ground truth, decoded detector output) for every image of a split."""
    with zipfile.ZipFile(root / f"{split}_frcnn.zip") as zf:
        for truth in read_jsonl(root / f"scenes_{split}.jsonl"):
            zip_name, entry = truth["frcnn"].split("@/")
            assert zip_name == f"{split}_frcnn.zip"
            yield truth, decode_zip_entry(zf, entry)


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_bytes_and_other_seed_other_scenes(corpus_dir, tmp_path):
    toyworld_corpus._vocab_lines.cache_clear()  # retrain the vocabulary too, not just reuse it
    toyworld.main(["--out", str(tmp_path / "again"), "--seed", "0", "--scale", "tiny", "--feature-dim", str(DIM)])
    files = sorted(p.relative_to(corpus_dir) for p in corpus_dir.rglob("*") if p.is_file())
    again = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert files == again and len(files) == 49
    for rel in files:
        assert (corpus_dir / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel

    toyworld.generate(tmp_path / "seed1", seed=1, scale="tiny", feature_dim=DIM)
    a = [r["objects"] for r in read_jsonl(corpus_dir / "scenes_train.jsonl")]
    b = [r["objects"] for r in read_jsonl(tmp_path / "seed1" / "scenes_train.jsonl")]
    assert len(a) == len(b) == 60
    assert sum(x != y for x, y in zip(a, b)) >= 55
    assert (corpus_dir / "mt/en-de/train.en").read_bytes() != (tmp_path / "seed1" / "mt/en-de/train.en").read_bytes()


# ------------------------------------------------------------------ tasks, splits, manifest


def test_manifest_streams_mirror_the_paper(corpus_dir):
    man = manifest(corpus_dir)
    train = {s["name"] for s in man["streams"] if s["split"] == "train"}
    assert train == {"ic_en", "ic_de", "ic_tr", "mmt_en-de", "mmt_de-en", "mmt_en-fr", "mmt_fr-en",
                     "mt_en-de", "mt_de-en", "mt_en-fr", "mt_fr-en", "mt_en-tr", "mt_tr-en"}
    zero = {(s["name"], s["split"]) for s in man["streams"] if s["zero_shot"]}
    assert zero == {("ic_fr", "test"), ("mmt_de-fr", "test"), ("mmt_fr-de", "test"),
                    ("mt_de-fr", "test"), ("mt_fr-de", "test")}
    for s in man["streams"]:
        # DE<->FR and French captioning exist only as zero-shot tests.
        if {s["src"], s["tgt"]} == {"de", "fr"} or s["name"] == "ic_fr":
            assert s["zero_shot"] and s["split"] == "test"
        if s["format"] == "jsonl":
            assert len(read_jsonl(corpus_dir / s["file"])) == s["count"]
        else:
            for f in (s["src_file"], s["tgt_file"]):
                assert len((corpus_dir / f).read_text(encoding="utf-8").splitlines()) == s["count"]
    listed = {s[k] for s in man["streams"] for k in ("file", "src_file", "tgt_file") if k in s}
    listed |= {f[k] for f in man["features"].values() for k in ("file", "scenes")} | {"manifest.json", man["vocab"]}
    on_disk = {str(p.relative_to(corpus_dir)) for p in corpus_dir.rglob("*") if p.is_file()}
    assert on_disk == listed
    counts = {(s["name"], s["split"]): s["count"] for s in man["streams"]}
    # IC: one caption per frame (two per image); TR captions cover half of train.
    assert counts["ic_en", "train"] == 120 and counts["ic_tr", "train"] == 60 and counts["ic_fr", "test"] == 24
    assert counts["mmt_en-de", "train"] == 60 and counts["mt_tr-en", "val"] == 12


def test_splits_are_disjoint(corpus_dir):
    keys = {split: {json.dumps(r["objects"]) for r in read_jsonl(corpus_dir / f"scenes_{split}.jsonl")}
            for split in SPLITS}
    assert [len(k) for k in keys.values()] == [60, 12, 12]
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    for lang in ("en", "de", "fr", "tr"):
        seen = {split: {line for f in corpus_dir.glob(f"mt/*/{split}.{lang}")
                        for line in f.read_text(encoding="utf-8").splitlines()} for split in SPLITS}
        assert not seen["train"] & (seen["val"] | seen["test"]) and not seen["val"] & seen["test"], lang


# ------------------------------------------------------------------ features


def test_zip_holds_exactly_the_generated_arrays(corpus_dir):
    corpus = toyworld.build_corpus(seed=0, scale="tiny", feature_dim=DIM)
    with zipfile.ZipFile(corpus_dir / "test_frcnn.zip") as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert len(zf.infolist()) == 12
        for image_id, scene in corpus.images["test"]:
            rec = decode_zip_entry(zf, f"{image_id:08d}.json")
            det = toyworld.image_detections(0, image_id, scene, DIM)
            assert (rec["image_w"], rec["image_h"]) == (640, 480)
            assert rec["num_boxes"] == len(det["boxes"]) and len(scene) <= rec["num_boxes"] <= len(scene) + 2
            for k in ("boxes", "features", "classes"):
                assert rec[k].dtype == np.float32 and np.array_equal(rec[k], det[k]), k
            assert rec["features"].shape[1] == DIM and rec["classes"].shape[1] == 10


def test_features_and_boxes_carry_the_scene(corpus_dir):
    attributes = manifest(corpus_dir)["attributes"]
    groups = [attributes["shape"], attributes["colour"], attributes["size"]]

    def rows(split):
        x, y = [], []
        for truth, rec in image_rows(corpus_dir, split):
            for o in truth["objects"]:
                x.append(rec["features"][o["box_index"]])
                y.append((o["shape"], o["colour"], o["size"]))
        return np.array(x), y

    # A linear read-out fitted on train RoIs only, then argmax within each attribute.
    x_train, y_train = rows("train")
    targets = np.array([[float(v == g_v) for g, v in zip(groups, t) for g_v in g] for t in y_train])
    w, *_ = np.linalg.lstsq(np.c_[x_train, np.ones(len(x_train))], targets, rcond=None)
    x_test, y_test = rows("test")
    scores = np.c_[x_test, np.ones(len(x_test))] @ w
    cuts = np.cumsum([0] + [len(g) for g in groups])
    decoded = [tuple(g[int(np.argmax(s[a:b]))] for g, a, b in zip(groups, cuts, cuts[1:])) for s in scores]
    assert len(y_test) >= 20 and decoded == y_test

    for truth, rec in image_rows(corpus_dir, "test"):
        # The whole-image box is the pipeline's to add, never the file's.
        assert not any(np.allclose(b, [0, 0, 639, 479]) for b in rec["boxes"])
        assert np.all(rec["boxes"][:, :2] >= 0) and np.all(rec["boxes"][:, 2] <= 639) and np.all(rec["boxes"][:, 3] <= 479)
        for o in truth["objects"]:
            x1, y1, x2, y2 = rec["boxes"][o["box_index"]]
            cell = 3 * int((y1 + y2) / 2 // 160) + int((x1 + x2) / 2 // (640 / 3))
            assert attributes["position"][cell] == o["position"]
            assert (np.sqrt((x2 - x1) * (y2 - y1)) > 90) == (o["size"] == "large")
            assert np.argmax(rec["classes"][o["box_index"]]) == 1 + groups[0].index(o["shape"])


# ------------------------------------------------------------------ MMT needs the image

ATTRS = "red blue green yellow black white brown grey small large".split()
FR_FORMS = {  # masculine singular, feminine singular, masculine plural, feminine plural
    "rouge": "rouge rouge rouges rouges", "bleu": "bleu bleue bleus bleues", "vert": "vert verte verts vertes",
    "jaune": "jaune jaune jaunes jaunes", "noir": "noir noire noirs noires", "blanc": "blanc blanche blancs blanches",
    "brun": "brun brune bruns brunes", "gris": "gris grise gris grises",
    "petit": "petit petite petits petites", "grand": "grand grande grands grandes"}
ATTRIBUTE_WORDS = {  # word form -> English attribute name
    "en": dict(zip(ATTRS, ATTRS)),
    "de": {b + e: a for a, b in zip(ATTRS, "rot blau grün gelb schwarz weiß braun grau klein groß".split())
           for e in ("", "e", "en", "er", "es")},
    "fr": {w: a for a, b in zip(ATTRS, FR_FORMS) for w in FR_FORMS[b].split()},
    "tr": dict(zip("kırmızı mavi yeşil sarı siyah beyaz kahverengi gri küçük büyük".split(), ATTRS)),
}


def attributes_in(text: str, lang: str) -> collections.Counter:
    return collections.Counter(ATTRIBUTE_WORDS[lang][w] for w in re.findall(r"\w+", text) if w in ATTRIBUTE_WORDS[lang])


def test_mmt_sources_leave_out_what_the_target_states(corpus_dir):
    truth = {r["image"]: r["objects"] for r in read_jsonl(corpus_dir / "scenes_test.jsonl")}
    needs_image = total = 0
    for s in manifest(corpus_dir)["streams"]:
        if s["task"] != "mmt" or s["split"] != "test":
            continue
        for row in read_jsonl(corpus_dir / s["file"]):
            src = attributes_in(row[s["src_field"]], s["src"])
            tgt = attributes_in(row[s["tgt_field"]], s["tgt"])
            needs_image += any(tgt[k] > src[k] for k in tgt) and not src - tgt
            total += 1
            # The target names every object's colour and size.
            assert set(tgt) == {o[a] for o in truth[row["image"]] for a in ("colour", "size")}, row
    assert total == 6 * 12
    assert needs_image >= total / 2, (needs_image, total)


# ------------------------------------------------------------------ grammar

DE_GENDER = {  # noun -> readings (gender, or "pl")
    **{w: {"m"} for w in "Würfel Kegel Zylinder Ring Stern Mann Junge Arzt Bauer Student Koch Hund Vogel Fisch "
                         "Brief Apfel Kuchen Ball Hut Schlüssel".split()},
    **{w: {"f"} for w in "Kugel Pyramide Frau Katze Kuh Maus Zeitung Banane Tasche Kiste Blume".split()},
    **{w: {"n"} for w in "Dreieck Ei Kind Pferd Schaf Buch Sandwich Bild Auto Fahrrad".split()},
    **{w: {"pl"} for w in "Männer Frauen Kinder Jungen Ärzte Bauern Studenten Köche Hunde Katzen Pferde "
                          "Vögel Fische Kühe Schafe Mäuse".split()},
    "Mädchen": {"n", "pl"}, "Lehrer": {"m", "pl"},
}
# (article, gender, case) -> declension the adjectives after it follow.
DE_ARTICLES = {tuple(item.split()): decl for decl, items in (
    ("weak", "der m nom, den m acc, dem m dat, die f nom, die f acc, der f dat, das n nom, das n acc, dem n dat, "
             "die pl nom, die pl acc, den pl dat, vom m dat, vom n dat"),
    ("mixed", "ein m nom, einen m acc, einem m dat, eine f nom, eine f acc, einer f dat, ein n nom, ein n acc, "
              "einem n dat")) for item in items.split(", ")}
DE_ENDING = {
    "weak": {"nom": dict(m="e", f="e", n="e", pl="en"), "acc": dict(m="en", f="e", n="e", pl="en"),
             "dat": dict(m="en", f="en", n="en", pl="en")},
    "mixed": {"nom": dict(m="er", f="e", n="es"), "acc": dict(m="en", f="e", n="es"),
              "dat": dict(m="en", f="en", n="en")},
}
DE_ADJ_STEMS = "klein groß rot blau grün gelb schwarz weiß braun grau jung alt glücklich müd hungrig".split()
DE_PREPOSITIONS = {"von", "über", "unter", "in", "auf", "an", "zu", "mit", "neben"}


def german_noun_phrases(sentence: str):
    """(article, [adjective endings], noun, required case) for every phrase headed by a known noun."""
    tokens = sentence.rstrip(".").replace(",", " ,").split()
    first_free = True
    for i, noun in enumerate(tokens):
        if noun not in DE_GENDER:
            continue
        j, endings = i - 1, []
        while j >= 0 and tokens[j][0].islower():
            stem = next((s for s in DE_ADJ_STEMS if tokens[j].startswith(s)), None)
            if stem is None:
                break
            endings.insert(0, tokens[j][len(stem):])
            j -= 1
        article = tokens[j].lower()
        if article == "vom" or (j > 0 and tokens[j - 1] in DE_PREPOSITIONS):
            case = "dat"
        else:
            # Subjects: the first free phrase, and every clause subject of "ist"/"befindet sich" frames.
            case = "nom" if first_free or " ist " in sentence or "befindet sich" in sentence else "acc"
            first_free = False
        yield article, endings, noun, case


def test_german_article_adjective_noun_agreement(corpus_dir):
    checked = collections.Counter()
    for sentence in texts_by_lang(corpus_dir)["de"]:
        for article, endings, noun, case in german_noun_phrases(sentence):
            ok = [g for g in DE_GENDER[noun] if (article, g, case) in DE_ARTICLES
                  and all(e == DE_ENDING[DE_ARTICLES[article, g, case]][case][g] for e in endings)]
            assert ok, (sentence, article, endings, noun, case)
            checked[case, article] += 1
    assert sum(checked.values()) > 500
    assert {c for c, _ in checked} == {"nom", "acc", "dat"} and ("dat", "vom") in checked and ("acc", "einen") in checked


FR_GENDER = {  # noun -> readings (gender, number)
    **{w: {("m", "s")} for w in "cube cône cylindre anneau triangle œuf homme enfant garçon professeur médecin "
                              "fermier étudiant cuisinier chien chat cheval oiseau poisson mouton livre journal "
                              "sandwich gâteau sac ballon chapeau tableau vélo".split()},
    **{w: {("f", "s")} for w in "image boule pyramide étoile femme fille vache lettre pomme banane boîte "
                              "clé fleur voiture".split()},
    **{w: {("m", "p")} for w in "hommes enfants garçons professeurs médecins fermiers étudiants cuisiniers chiens "
                              "chats chevaux oiseaux poissons moutons".split()},
    **{w: {("f", "p")} for w in "femmes filles vaches".split()},
    "souris": {("f", "s"), ("f", "p")},
}
FR_ARTICLE = {"un": {("m", "s")}, "le": {("m", "s")}, "du": {("m", "s")}, "une": {("f", "s")}, "la": {("f", "s")},
              "l'": {("m", "s"), ("f", "s")}, "les": {("m", "p"), ("f", "p")}, "des": {("m", "p"), ("f", "p")}}
FR_BEFORE = {"petit": "petit petite petits petites", "grand": "grand grande grands grandes",
             "jeune": "jeune jeune jeunes jeunes", "vieux": "vieux vieille vieux vieilles"}
FR_AFTER = {**{k: v for k, v in FR_FORMS.items() if k not in FR_BEFORE}, "heureux": "heureux heureuse heureux heureuses",
            "fatigué": "fatigué fatiguée fatigués fatiguées", "affamé": "affamé affamée affamés affamées"}


def _fr_readings(table: dict) -> dict:
    out = collections.defaultdict(set)
    for forms in table.values():
        for form, gn in zip(forms.split(), [("m", "s"), ("f", "s"), ("m", "p"), ("f", "p")]):
            out[form].add(gn)
    return out


def test_french_agreement_placement_and_elision(corpus_dir):
    before, after = _fr_readings(FR_BEFORE), _fr_readings(FR_AFTER)
    before["vieil"] = {("m", "s")}
    vowel = tuple("aeiouéèêâîôœh")
    checked = 0
    for sentence in texts_by_lang(corpus_dir)["fr"]:
        assert not re.search(r"\b(de|à) (le|les)\b", sentence), sentence  # must contract to du/des/au
        tokens = re.sub(r"\b([lL]')", r"\1 ", sentence.rstrip(".")).replace(",", " ,").split()
        tokens = [t.lower() if t in ("L'", "Le", "La", "Les", "Un", "Une", "Des") else t for t in tokens]
        for i, word in enumerate(tokens[:-1]):
            nxt = tokens[i + 1]
            assert (word == "l'") == (word in ("l'", "le", "la") and nxt.startswith(vowel)), sentence
            if word == "vieil" or (word == "vieux" and nxt in FR_GENDER and ("m", "s") in FR_GENDER[nxt]):
                assert (word == "vieil") == nxt.startswith(vowel), sentence
        for i, noun in enumerate(tokens):
            if noun not in FR_GENDER:
                continue
            # Article, adjectives and noun must share one gender/number reading.
            readings = set(FR_GENDER[noun])
            j = i - 1
            while tokens[j] in before:
                readings &= before[tokens[j]]
                j -= 1
            readings &= FR_ARTICLE[tokens[j]]
            k = i + 1
            while k < len(tokens) and tokens[k] in after:
                readings &= after[tokens[k]]
                k += 1
            assert readings, (sentence, noun)
            # Sizes go before the noun, colours after it.
            assert i + 1 == len(tokens) or tokens[i + 1] not in before, sentence
            assert tokens[i - 1] not in after, sentence
            checked += 1
    assert checked > 500


TR_STEMS = {  # stem -> stem before a vowel-initial suffix, where the final consonant softens or a vowel drops
    **{w: w for w in "küp top koni silindir halka yıldız üçgen yumurta sol sağ orta üst alt köşe adam kadın kız "
                     "oğlan öğretmen doktor çiftçi öğrenci aşçı kedi at kuş koyun fare gazete elma sandviç pasta "
                     "muz çanta kutu şapka anahtar araba bisiklet park bahçe mutfak okul plaj orman şehir ev sokak "
                     "kenar kütüphane pazar istasyon köy ofis göl son".split()},
    "piramit": "piramid", "çocuk": "çocuğ", "köpek": "köpeğ", "balık": "balığ", "inek": "ineğ", "kitap": "kitab",
    "mektup": "mektub", "çiçek": "çiçeğ", "resim": "resm",
}
TR_SUFFIXES = {"loc": "da de ta te", "pl": "lar ler", "gen": "ın in un ün nın nin nun nün",
               "acc": "ı i u ü yı yi yu yü", "poss_loc": "ında inde unda ünde sında sinde sunda sünde"}


def expected_suffix(stem: str, kind: str) -> str:
    last = [c for c in stem if c in "aeıioöuü"][-1]
    a = "a" if last in "aıou" else "e"
    i = {"a": "ı", "ı": "ı", "o": "u", "u": "u", "e": "i", "i": "i", "ö": "ü", "ü": "ü"}[last]
    ends_vowel = stem[-1] in "aeıioöuü"
    return {"loc": ("t" if stem[-1] in "çfhkpsşt" else "d") + a, "pl": "l" + a + "r",
            "gen": ("n" if ends_vowel else "") + i + "n", "acc": ("y" if ends_vowel else "") + i,
            "poss_loc": ("s" if ends_vowel else "") + i + "nd" + ("a" if i in "ıu" else "e")}[kind]


def split_suffix(word: str):
    """(stem, stem as written, suffix, kind) when word is a known stem plus one suffix, else None."""
    for stem in sorted(TR_STEMS, key=len, reverse=True):
        for written in dict.fromkeys((stem, TR_STEMS[stem])):
            rest = word[len(written):] if word.startswith(written) else None
            kind = next((k for k, v in TR_SUFFIXES.items() if rest in v.split()), None)
            if kind:
                return stem, written, rest, kind
    return None


def test_turkish_suffixes_follow_vowel_harmony(corpus_dir):
    kinds = collections.Counter()
    for sentence in texts_by_lang(corpus_dir)["tr"]:
        for word in re.findall(r"\w+", sentence.replace("İ", "i").replace("I", "ı").lower()):
            assert not word.endswith("yorler"), sentence  # -yor is always back-rounded
            if (hit := split_suffix(word)) is None:
                continue
            stem, written, suffix, kind = hit
            assert suffix == expected_suffix(stem, kind), (sentence, word)
            # A softening stem softens before a vowel, and only there.
            assert written == (TR_STEMS[stem] if suffix[0] in "aeıioöuü" else stem), (sentence, word)
            kinds[kind] += 1
    assert set(kinds) == set(TR_SUFFIXES) and sum(kinds.values()) > 300, kinds


# ------------------------------------------------------------------ vocabulary


def test_vocab_keeps_special_ids_and_covers_every_sentence(corpus_dir):
    vocab_file = corpus_dir / "vocab.txt"
    lines = vocab_file.read_text(encoding="utf-8").splitlines()
    assert 300 <= len(lines) <= 2000 and len(set(lines)) == len(lines)
    tok = BertTokenizer(str(vocab_file), do_lower_case=False, tokenize_chinese_chars=True, strip_accents=False)
    assert tok.convert_tokens_to_ids(list(SPECIAL_IDS)) == list(SPECIAL_IDS.values())
    assert [lines[i] for i in (2, 15, 21, 99)] == ["[unused2]", "[unused15]", "[unused21]", "[unused99]"]
    for lang, texts in texts_by_lang(corpus_dir).items():
        for text in texts:
            pieces = tok.tokenize(text)
            assert "[UNK]" not in pieces, (lang, text, pieces)
            # Cased, accents kept: the pieces spell the sentence exactly.
            assert "".join(p.removeprefix("##") for p in pieces) == text.replace(" ", ""), (lang, text)


def test_every_language_has_a_real_vocabulary(corpus_dir):
    cover = {lang: set(re.findall(r"\w+", " ".join(
        list(toyworld_captions.cover_captions(lang))
        + [toyworld_sentences.realise(s, lang) for s in toyworld_sentences.cover_sentences()])))
        for lang in ("en", "de", "fr", "tr")}
    for lang, texts in texts_by_lang(corpus_dir).items():
        assert len(cover[lang]) >= 150, (lang, len(cover[lang]))
        # The vocabulary is trained on the cover, so every word written must be in it.
        assert set(re.findall(r"\w+", " ".join(texts))) <= cover[lang], lang
