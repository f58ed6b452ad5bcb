"""Text metrics for decoded outputs: detokenisation, sacreBLEU, and coco-caption's BLEU-1..4,
METEOR 1.5, CIDEr (coco-caption's "CIDEr", i.e. CIDEr-D) and ROUGE-L from pycocoevalcap 1.2.

`score(hyps, refs, lang)` reports two families side by side:
- `bleu`: sacreBLEU corpus BLEU, default signature (13a tokenisation, cased, exp smoothing), on
  the detokenised text; `bleu_lc` the same lowercased, which is what the original's
  LanguageGeneration/evaluate_translation.py printed (it lowercased both sides).
- coco metrics: both sides go through ONE preprocessing step, `tokenize=`, then pycocoevalcap's
  scorers (the original acknowledges nmtpytorch, whose coco-metrics feeds them as-is):
    "words" (default): lowercase, then split off every punctuation character exactly as BERT's
        basic tokenizer does, so references are cut like the model's detokenised wordpieces.
        Language-neutral, no Java.
    "ptb": coco-caption's own PTBTokenizer (Stanford CoreNLP 3.4.1 jar shipped in pycocoevalcap;
        lowercases, drops punctuation, English rules, needs Java and a writable site-packages:
        it writes a temporary file beside its jar). Use it to compare with COCO/Flickr30k EN
        caption numbers such as the paper's.
    "none": the strings as given, split at spaces.
Scales: BLEU-n, METEOR and ROUGE-L x100; CIDEr on coco-caption's own scale (the paper's 0.587).

METEOR runs meteor-1.5.jar (bundled with pycocoevalcap) in -stdio mode, one long-lived JVM per
command line, see `meteor_command` for which languages work here and how.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import io
import logging
import os
import queue
import shutil
import subprocess
import threading

import numpy as np
import sacrebleu

from bertgen_jax import vocab

log = logging.getLogger(__name__)

TOKENIZE = ("words", "ptb", "none")
METEOR_DATA_ENV = "BERTGEN_METEOR_DATA"

# Ids that are layout, not text. [UNK] is kept: it is a real (wrong) output word.
_NOT_TEXT = {vocab.PAD_ID, vocab.CLS_ID, vocab.SEP_ID, vocab.MASK_ID,
             *(vocab.SPECIAL_IDS[t] for t in vocab.LANG_TAGS.values())}


def detokenize(wordpieces: list[str]) -> str:
    """The original's output text: wordpieces joined with spaces, then " ##" removed."""
    return " ".join(wordpieces).replace(" ##", "")


def ids_to_text(tokenizer, ids) -> str:
    """Text of decoded (or reference) ids: cut at the first [STOP], drop layout tokens."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if vocab.STOP_ID in ids:
        ids = ids[:ids.index(vocab.STOP_ID)]
    return detokenize(tokenizer.convert_ids_to_tokens([i for i in ids if i not in _NOT_TEXT]))


def score(hyps: list[str], refs: list[list[str]], lang: str, *, tokenize: str = "words",
          meteor_data: str | None = None) -> dict:
    """Corpus scores of `hyps` against `refs`, where refs[i] lists the references of hyps[i]
    (any number >= 1 per hypothesis). `lang` is the target language (METEOR's -l)."""
    if not hyps or len(hyps) != len(refs):
        raise ValueError(f"score: {len(hyps)} hypotheses for {len(refs)} reference lists; "
                         "need the same number, at least one")
    for i, rs in enumerate(refs):
        if isinstance(rs, str) or not rs or not all(isinstance(r, str) and r.strip() for r in rs):
            raise ValueError(f"score: references of hypothesis {i} must be a non-empty list of "
                             f"non-empty strings, got {rs!r}")
    out = {"n": len(hyps)}
    out.update(sacre_bleu(hyps, refs))
    out["bleu_lc"] = sacre_bleu(hyps, refs, lowercase=True)["bleu"]
    h, r = preprocess(hyps, refs, tokenize)
    out.update(coco_scores(h, r))
    out["meteor"], out["meteor_note"] = meteor(h, r, lang, data_dir=meteor_data)
    out["tokenize"] = tokenize
    return out


def sacre_bleu(hyps: list[str], refs: list[list[str]], lowercase: bool = False) -> dict:
    """sacreBLEU over per-hypothesis reference lists; a missing reference is None, which sacreBLEU
    reads as 'this segment has fewer references'."""
    streams = [[rs[k] if k < len(rs) else None for rs in refs] for k in range(max(map(len, refs)))]
    metric = sacrebleu.metrics.BLEU(lowercase=lowercase)
    result = metric.corpus_score(hyps, streams)
    return {"bleu": result.score, "bleu_signature": str(metric.get_signature())}


def preprocess(hyps: list[str], refs: list[list[str]], tokenize: str):
    """(hyps, refs) as the coco metrics see them; see the module docstring for the choices."""
    if tokenize == "words":
        from tokenizers.pre_tokenizers import BertPreTokenizer  # noqa: PLC0415
        pre = BertPreTokenizer()

        def words(s):
            return " ".join(w for w, _ in pre.pre_tokenize_str(s.lower()))
        return [words(s) for s in hyps], [[words(s) for s in rs] for rs in refs]
    if tokenize == "ptb":
        _need_java("PTBTokenizer (tokenize='ptb')")
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # noqa: PLC0415
        table = {("h", i): [{"caption": s}] for i, s in enumerate(hyps)}
        table.update({("r", i): [{"caption": s} for s in rs] for i, rs in enumerate(refs)})
        with contextlib.redirect_stdout(io.StringIO()):
            done = PTBTokenizer().tokenize(table)
        return [done[("h", i)][0] for i in range(len(hyps))], [done[("r", i)] for i in range(len(refs))]
    if tokenize == "none":
        return [" ".join(s.split()) for s in hyps], [[" ".join(s.split()) for s in rs] for rs in refs]
    raise ValueError(f"score: unknown tokenize={tokenize!r}; one of {TOKENIZE}")


def coco_scores(hyps: list[str], refs: list[list[str]]) -> dict:
    """pycocoevalcap's BLEU-1..4 ('closest' reference length), CIDEr-D and ROUGE-L."""
    from pycocoevalcap.bleu.bleu import Bleu  # noqa: PLC0415
    from pycocoevalcap.cider.cider import Cider  # noqa: PLC0415
    from pycocoevalcap.rouge.rouge import Rouge  # noqa: PLC0415
    res = {i: [h] for i, h in enumerate(hyps)}
    gts = {i: list(rs) for i, rs in enumerate(refs)}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its statistics
        bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    # Rouge.compute_score divides by the hypothesis length: an empty output scores 0 instead.
    rouge = Rouge()
    rouge_l = np.mean([rouge.calc_score([h], rs) if h.split() else 0.0 for h, rs in zip(hyps, refs)])
    out = {f"bleu_{n}": 100.0 * float(b) for n, b in enumerate(bleus, start=1)}
    out.update(cider=float(cider), rouge_l=100.0 * float(rouge_l))
    return out


# ----------------------------------------------------------------------------------------- METEOR
def meteor_jar() -> str:
    import pycocoevalcap  # noqa: PLC0415 (a namespace package: no __file__)
    return os.path.join(list(pycocoevalcap.__path__)[0], "meteor", "meteor-1.5.jar")


class MeteorUnavailable(RuntimeError):
    """METEOR cannot score this language here; the message says why."""


class MeteorError(RuntimeError):
    """The METEOR process failed or stopped answering."""


class JavaMissing(RuntimeError):
    """METEOR and the PTB tokenizer are Java programs."""


# Meteor 1.5's own language codes; ours (ISO 639-1) map onto them.
_METEOR_CODE = {"cs": "cz", "sv": "se", "nb": "no"}
# Languages the jar can normalise (-norm: tokenise + lowercase); the rest get -lower on text that
# `preprocess` has already split, since -norm fails for them ("No normalizer for language").
_NORMALIZED = {"en", "cz", "de", "es", "fr", "ru"}
# Whose default modules include a paraphrase table: only paraphrase-en.gz is bundled, so without
# BERTGEN_METEOR_DATA the others fall back to these modules (Czech has no stemmer in 1.5).
_PARAPHRASE_FALLBACK = {"cz": "exact", "de": "exact stem", "es": "exact stem", "fr": "exact stem",
                        "ru": "exact stem"}
# "Supported with language-independent parameters" (exact + snowball stem).
_INDEPENDENT = {"da", "fi", "hu", "it", "nl", "no", "pt", "ro", "se", "tr"}


def meteor_command(lang: str, data_dir: str | None = None) -> tuple[list[str], str]:
    """(jar arguments, note) for scoring `lang`; raises MeteorUnavailable with the reason.

    en: `-l en -norm`, all four modules, exactly as pycocoevalcap/coco-caption. de, fr, es, cs,
    ru: the paper's setting needs paraphrase-<l>.gz from the Meteor 1.5 distribution, which no
    PyPI package ships; put it in $BERTGEN_METEOR_DATA (or pass data_dir) to get it, otherwise
    the score uses exact+stem only and is NOT comparable with published METEOR. da fi hu it nl
    no pt ro sv tr: Meteor's language-independent parameters. Anything else (ar needs Buckwalter
    transliteration): unavailable.
    """
    code = _METEOR_CODE.get(lang, lang)
    if code not in {"en", *_PARAPHRASE_FALLBACK, *_INDEPENDENT}:
        raise MeteorUnavailable(f"METEOR 1.5 has no parameters for language {lang!r}")
    args = ["-l", code, "-norm" if code in _NORMALIZED else "-lower"]
    if code == "en":
        return args, "METEOR 1.5 -l en -norm (exact stem synonym paraphrase), as coco-caption"
    if code in _INDEPENDENT:
        return args, f"METEOR 1.5 -l {code} -lower, language-independent parameters"
    data_dir = data_dir or os.environ.get(METEOR_DATA_ENV)
    table = os.path.join(data_dir, f"paraphrase-{code}.gz") if data_dir else None
    if table and os.path.isfile(table):
        return args + ["-a", table], f"METEOR 1.5 {' '.join(args)} with {table}"
    modules = _PARAPHRASE_FALLBACK[code]
    return args + ["-m", modules], (
        f"METEOR 1.5 {' '.join(args)} -m '{modules}': no paraphrase-{code}.gz here (set "
        f"{METEOR_DATA_ENV} to Meteor 1.5's data/ folder), so lower than the paper's METEOR")


def _need_java(what: str) -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaMissing(f"{what} needs Java and `java` is not on PATH: install a JRE "
                                "(e.g. apt-get install default-jre-headless)")
    return java


class MeteorProcess:
    """One `java -jar meteor-1.5.jar - - -stdio ...` kept alive between calls.

    Protocol (as pycocoevalcap's wrapper): `SCORE ||| ref1 ||| ... ||| hyp` answers one line of
    sufficient statistics; `EVAL ||| stats1 ||| ... ||| statsN` answers N segment scores and then
    the corpus score. Reader threads drain stdout and stderr so no pipe can fill and block us;
    every read has a timeout, after which the JVM is killed.
    """

    def __init__(self, args: list[str], *, startup_timeout: float = 300.0, timeout: float = 120.0):
        self.args = args
        self.cmd = [_need_java("METEOR"), "-Xmx2G", "-jar", meteor_jar(), "-", "-", "-stdio", *args]
        self.startup_timeout, self.timeout, self.started = startup_timeout, timeout, False
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(self.cmd, cwd=os.path.dirname(meteor_jar()), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     encoding="utf-8", bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        self.errors: collections.deque = collections.deque(maxlen=20)
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        self._stderr = threading.Thread(target=self._pump, args=(self.proc.stderr, self.errors.append),
                                        daemon=True)
        self._stderr.start()

    @staticmethod
    def _pump(stream, sink):
        for line in iter(stream.readline, ""):
            sink(line)
        sink(None)

    def score(self, hyps: list[str], refs: list[list[str]]) -> float:
        """Corpus METEOR in [0, 1]."""
        clean = lambda s: " ".join(s.replace("|||", " ").split())  # noqa: E731 (one line per segment)
        with self.lock:
            self._write("".join(f"SCORE ||| {' ||| '.join(map(clean, rs))} ||| {clean(h)}\n"
                                for h, rs in zip(hyps, refs)))
            stats = [self._read() for _ in hyps]
            self._write(f"EVAL ||| {' ||| '.join(stats)}\n")
            for _ in hyps:
                self._read()
            return float(self._read())

    def _write(self, text: str) -> None:
        try:
            self.proc.stdin.write(text)
            self.proc.stdin.flush()
        except OSError as err:
            raise self._failed(f"stopped taking input ({err})") from None

    def _read(self) -> str:
        timeout = self.timeout if self.started else self.startup_timeout
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise self._failed(f"gave no answer in {timeout:.0f} s") from None
        if line is None:
            raise self._failed("exited")
        if line.startswith("Error"):
            raise self._failed(line.strip())
        self.started = True
        return line.strip()

    def _failed(self, what: str) -> MeteorError:
        self.close()
        self._stderr.join(timeout=5)  # the JVM's last words explain most failures
        lines = "".join(e for e in self.errors if e).strip().splitlines()
        tail = [x for x in lines if not x.lstrip().startswith("at ")][-3:]  # not the Java stack
        return MeteorError(f"METEOR ({' '.join(self.cmd)}) {what}; stderr: {' | '.join(tail) or '-'}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.proc.kill()
            self.proc.wait()


_PROCESSES: dict[tuple, MeteorProcess] = {}
_PROCESSES_LOCK = threading.Lock()


def meteor_process(args: list[str]) -> MeteorProcess:
    """The live process for these jar arguments, started on first use (the English paraphrase
    table takes ~10 s to load, so each JVM is kept for the life of the Python process)."""
    with _PROCESSES_LOCK:
        proc = _PROCESSES.get(tuple(args))
        if proc is None or not proc.alive():
            proc = _PROCESSES[tuple(args)] = MeteorProcess(args)
        return proc


@atexit.register
def close_meteor_processes() -> None:
    with _PROCESSES_LOCK:
        for proc in _PROCESSES.values():
            proc.close()
        _PROCESSES.clear()


def meteor(hyps: list[str], refs: list[list[str]], lang: str, *,
           data_dir: str | None = None) -> tuple[float | None, str]:
    """(corpus METEOR x100, how it was computed), or (None, why not). Never raises for a missing
    Java, an unsupported language or a failed JVM: an evaluation should still report the rest."""
    try:
        args, note = meteor_command(lang, data_dir)
        return 100.0 * meteor_process(args).score(hyps, refs), note
    except (MeteorUnavailable, MeteorError, JavaMissing) as err:
        log.warning("no METEOR for %s: %s", lang, err)
        return None, str(err)
