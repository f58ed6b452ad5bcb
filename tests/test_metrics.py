"""Metrics: detokenisation, sacreBLEU equal to its command line, coco metrics equal to
pycocoevalcap called directly, METEOR per language and its failure modes."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from bertgen_jax import metrics, vocab

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "captions_en.json")
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")


@pytest.fixture(scope="module")
def captions():
    with open(FIXTURE, encoding="utf-8") as f:
        items = json.load(f)["items"]
    return [x["hyp"] for x in items], [x["refs"] for x in items]


@pytest.fixture(scope="module")
def pycoco_meteor():
    """pycocoevalcap's own METEOR wrapper, started together with ours: each JVM spends ~10 s
    loading the English paraphrase table, and the two loads overlap."""
    if shutil.which("java") is None:
        pytest.skip("METEOR needs Java")
    from pycocoevalcap.meteor.meteor import Meteor
    ours = metrics.meteor_process(metrics.meteor_command("en")[0])
    theirs = Meteor()
    yield ours, theirs
    theirs.meteor_p.kill()
    theirs.meteor_p.wait()


def test_detokenize_joins_wordpieces():
    assert metrics.detokenize("un ##believ ##able".split()) == "unbelievable"
    assert metrics.detokenize(["a", "dog", ".", "un", "##believ"]) == "a dog . unbeliev"
    assert metrics.detokenize([]) == ""


def test_ids_to_text_cuts_at_stop_and_drops_layout_tokens(tmp_path):
    lines = [f"[unused{i}]" for i in range(104)] + ["un", "##believ", "##able", "dog", "."]
    (tmp_path / "raw.txt").write_text("\n".join(lines) + "\n")
    vocab.write_vocab_with_tags(str(tmp_path / "raw.txt"), str(tmp_path / "vocab.txt"))
    tok = vocab.load_tokenizer(str(tmp_path / "vocab.txt"))
    ids = [vocab.lang_tag_id("de"), vocab.CLS_ID, 104, 105, 106, vocab.SEP_ID, 107, vocab.UNK_ID,
           vocab.MASK_ID, 108, vocab.STOP_ID, 107, vocab.PAD_ID]
    assert metrics.ids_to_text(tok, ids) == "unbelievable dog [UNK] ."
    assert metrics.ids_to_text(tok, [vocab.STOP_ID, 104]) == ""


def _cli_bleu(tmp_path, hyps, ref_streams, *extra):
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n")
    refs = []
    for k, stream in enumerate(ref_streams):
        refs.append(str(tmp_path / f"ref{k}.txt"))
        (tmp_path / f"ref{k}.txt").write_text("\n".join(stream) + "\n")
    out = subprocess.run([sys.executable, "-m", "sacrebleu", *refs, "-i", str(tmp_path / "hyp.txt"),
                          "-m", "bleu", "-b", "-w", "6", *extra], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_sacrebleu_equals_the_command_line_single_and_multi_reference(tmp_path, captions):
    hyps, refs = captions
    single = metrics.sacre_bleu(hyps, [r[:1] for r in refs])
    assert round(single["bleu"], 6) == _cli_bleu(tmp_path, hyps, [[r[0] for r in refs]])
    assert single["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    two = [(h, r[:2]) for h, r in zip(hyps, refs) if len(r) >= 2]
    h2, r2 = [h for h, _ in two], [r for _, r in two]
    multi = metrics.sacre_bleu(h2, r2)
    assert round(multi["bleu"], 6) == _cli_bleu(tmp_path, h2, [[r[0] for r in r2], [r[1] for r in r2]])
    lower = metrics.sacre_bleu(hyps, [r[:1] for r in refs], lowercase=True)
    assert round(lower["bleu"], 6) == _cli_bleu(tmp_path, hyps, [[r[0] for r in refs]], "-lc")
    assert lower["bleu"] > single["bleu"]  # "a" meets "A" only when lowercased
    # Fewer references for some lines are passed as None: a third reference changes the score.
    assert metrics.sacre_bleu(h2, [r[:3] for r in refs if len(r) >= 2])["bleu"] != multi["bleu"]


@needs_java
def test_coco_metrics_equal_pycocoevalcap_called_directly(captions, pycoco_meteor):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    hyps, refs = captions
    got = metrics.score(hyps, refs, "en")
    h, r = metrics.preprocess(hyps, refs, "words")
    assert h[0] == "a man is riding a bicycle down the street ."
    assert r[1][1] == "dogs playing in a field with a ball ."
    res, gts = {i: [x] for i, x in enumerate(h)}, {i: x for i, x in enumerate(r)}
    bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [got[f"bleu_{n}"] for n in (1, 2, 3, 4)] == pytest.approx([100 * b for b in bleus], abs=1e-9)
    assert got["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
    assert got["rouge_l"] == pytest.approx(100 * Rouge().compute_score(gts, res)[0], abs=1e-9)
    assert got["meteor"] == pytest.approx(100 * pycoco_meteor[1].compute_score(gts, res)[0], abs=1e-9)
    assert 0 < got["meteor"] < 100 and got["cider"] > 0
    assert got["meteor_note"].startswith("METEOR 1.5 -l en -norm")


@needs_java
def test_ptb_tokenization_is_coco_captions_own(captions):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    hyps, refs = captions
    h, r = metrics.preprocess(hyps, refs, "ptb")
    assert h[0] == "a man is riding a bicycle down the street"  # lowercased, punctuation dropped
    gts = PTBTokenizer().tokenize({i: [{"caption": x} for x in rs] for i, rs in enumerate(refs)})
    assert r == [gts[i] for i in range(len(refs))]
    got = metrics.coco_scores(h, r)
    assert got["bleu_4"] == pytest.approx(100 * Bleu(4).compute_score(
        gts, {i: [x] for i, x in enumerate(h)}, verbose=0)[0][3], abs=1e-9)


@needs_java
def test_meteor_scores_german_french_turkish_and_declines_others():
    de = ["ein Hund läuft im Park .", "zwei Männer spielen Fußball ."]
    for lang, refs in (("de", de), ("fr", ["un chien court dans le parc .", "deux hommes jouent au football ."])):
        exact, note = metrics.meteor(refs, [[r] for r in refs], lang)
        wrong, _ = metrics.meteor(["eine Katze", "ein Auto"], [[r] for r in refs], lang)
        assert exact > 95 and wrong < 20, (lang, exact, wrong)
        assert f"-l {lang} -norm -m 'exact stem'" in note and f"paraphrase-{lang}.gz" in note
    # Meteor 1.5's German stemmer: "Hunde laufen" meets "Hund läuft" (snowball stems) and scores
    # above an unrelated sentence of the same length.
    stem, _ = metrics.meteor(["ein Hunde läuft im Park ."], [[de[0]]], "de")
    assert 50 < stem < exact
    # Turkish runs with Meteor's language-independent parameters; its snowball stemmer matches
    # "köpekler" with "köpek" (the number is the jar's own).
    tr, note = metrics.meteor(["köpekler parkta koşuyor"], [["köpek parkta koşuyor"]], "tr")
    assert tr == pytest.approx(83.3333333, abs=1e-5) and "-l tr -lower" in note
    for lang in ("ja", "ar", "xx"):
        none, why = metrics.meteor(["a"], [["a"]], lang)
        assert none is None and f"no parameters for language {lang!r}" in why


def test_meteor_command_per_language(tmp_path, monkeypatch):
    monkeypatch.delenv(metrics.METEOR_DATA_ENV, raising=False)
    assert metrics.meteor_command("en")[0] == ["-l", "en", "-norm"]
    assert metrics.meteor_command("de")[0] == ["-l", "de", "-norm", "-m", "exact stem"]
    assert metrics.meteor_command("cs")[0] == ["-l", "cz", "-norm", "-m", "exact"]
    assert metrics.meteor_command("sv")[0] == ["-l", "se", "-lower"]
    assert metrics.meteor_command("tr")[0] == ["-l", "tr", "-lower"]
    (tmp_path / "paraphrase-fr.gz").write_bytes(b"")
    monkeypatch.setenv(metrics.METEOR_DATA_ENV, str(tmp_path))
    args, note = metrics.meteor_command("fr")
    assert args == ["-l", "fr", "-norm", "-a", str(tmp_path / "paraphrase-fr.gz")] and "with" in note
    assert metrics.meteor_command("de")[0][-2:] == ["-m", "exact stem"]  # no German table there
    with pytest.raises(metrics.MeteorUnavailable, match="'zh'"):
        metrics.meteor_command("zh")


def test_meteor_without_java_is_none_with_the_reason(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    monkeypatch.setattr(metrics, "_PROCESSES", {})
    value, why = metrics.meteor(["a b"], [["a b"]], "it")
    assert value is None and "`java` is not on PATH" in why
    with pytest.raises(metrics.JavaMissing, match="PTBTokenizer"):
        metrics.preprocess(["a"], [["a"]], "ptb")


@needs_java
def test_a_failing_meteor_jvm_raises_with_its_stderr():
    # Russian's default modules want paraphrase-ru.gz, which is not bundled: the JVM exits.
    proc = metrics.MeteorProcess(["-l", "ru", "-norm"])
    with pytest.raises(metrics.MeteorError, match=r"exited; stderr: .*paraphrase-ru\.gz"):
        proc.score(["a"], [["a"]])
    assert not proc.alive()


def test_score_checks_its_inputs_and_survives_empty_hypotheses(monkeypatch):
    monkeypatch.setattr(metrics, "meteor", lambda h, r, lang, data_dir=None: (None, "off"))
    with pytest.raises(ValueError, match="2 hypotheses for 1 reference lists"):
        metrics.score(["a", "b"], [["a"]], "en")
    with pytest.raises(ValueError, match="references of hypothesis 1"):
        metrics.score(["a", "b"], [["a"], []], "en")
    with pytest.raises(ValueError, match="references of hypothesis 0"):
        metrics.score(["a"], ["a"], "en")
    with pytest.raises(ValueError, match="unknown tokenize='bpe'"):
        metrics.score(["a"], [["a"]], "en", tokenize="bpe")
    got = metrics.score(["", "the cat sat"], [["a dog ran"], ["the cat sat", "a cat sat"]], "en")
    assert got["rouge_l"] == pytest.approx(50.0)  # mean of 0 (empty) and 100 (exact)
    assert got["bleu"] == pytest.approx(metrics.sacre_bleu(["", "the cat sat"],
                                                           [["a dog ran"], ["the cat sat"]])["bleu"])
