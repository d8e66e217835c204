"""HELMET (Yen et al., 2024) from its released files, scored with HELMET's own metrics.

Name a task ``helmet:<category>:PATH`` (``helmet:<category>@<setting>:PATH`` pins a length
setting). ``PATH`` is a file, or for the categories in HELMET's download (``data.tar.gz`` of
``scripts/download_data.sh``) the ``data/`` folder (or the folder holding it): the file is
then picked by the length setting, as HELMET's configs do. The setting is ``4k`` ... ``128k``
(4096 ... 131072 tokens): the pinned one, else the largest not above the evaluation length
(4k below 4096). Every prompt is fitted to the evaluation length by cutting the *end* of its
context, as HELMET's ``tokenize`` does. ``helmet:PATH`` (no category) is the older generic
reader, `HelmetTask`.

Categories (the ones the HELMET paper averages, with HELMET's prompt, metric and answer budget;
field names are HELMET's; ``a|b`` = either field):

========================  ==========================================================  =======
category                  fields of a record / file per setting (under ``data/``)     metric
========================  ==========================================================  =======
json_kv (Recall)          context, question, answer, num_kvs, [demos: [[key, value]]]  sub-EM
                          ``json_kv/test_k{50,105,220,440,900,1800}_dep6.jsonl``
ruler_niah_mk_2/_mk_3,    context, query|question, outputs|answer, type_needle_v       recall
ruler_niah_mv (Recall)    ``ruler/niah_multikey_2/validation_<tokens>.jsonl`` ...
nq, triviaqa, hotpotqa,   question, answers, ctxs ([{title, text}]) | context          sub-EM
popqa (RAG)               ``kilt/nq-dev-multikilt_1000_k{20..1000}_dep6.jsonl`` ...
trec_coarse, trec_fine,   text + the label field (coarse_label, fine_label, label,     EM
banking77, clinic150,     intent, label), or prebuilt context, question, answer|label
nlu (ICL)                 (not in the download: export the Hugging Face dataset)
infbench_qa (LongQA)      context, input, answer (list) (InfiniteBench                 ROUGE-L
                          ``longbook_qa_eng.jsonl``)                                   F1
infbench_choice (LongQA)  context, input, answer, options (``longbook_choice_eng``)    EM
========================  ==========================================================  =======

Metrics (HELMET ``utils.py`` / ``data.py``): answers and predictions are normalised as SQuAD
(lower case, punctuation and articles removed, spaces collapsed). *sub-EM*: a gold answer
occurs in the prediction (any of them); *EM*: the prediction equals one; *recall* (RULER):
the fraction of gold values found, case-insensitive substring; *ROUGE-L F1*: longest common
subsequence of tokens, best over the gold answers (with ``rouge_score`` installed, its scorer
with the Porter stemmer, as HELMET; else our LCS implementation on rouge_score's tokens, no
stemming). As HELMET's post-processing, the metric is the better of the raw output and the
output parsed after the answer prefix (``Answer:``; ICL: parsed only; infbench_choice also
counts ``"B. <option text>"`` found in the output).

Prompts: HELMET's templates; recall, RAG and ICL are raw text (``use_chat_template: false``:
``user + "\\n" + answer prefix``, no chat template), LongQA goes through the chat template. RAG
and ICL stop at the first new line in HELMET (``stop_new_line``); here the output is cut at its
first line break after some text. Demonstrations: json_kv takes its 2 from the record's
``demos``; RAG takes 2 from HELMET's demo file when it lies next to the test file
(``kilt/nq-train-multikilt_1000_k3_dep6.jsonl`` ...; else none); ICL builds HELMET's balanced
demonstrations (shots per setting, e.g. TREC coarse 200 ... 6600) from the file's other records
(or from ``train.jsonl`` when PATH is a folder with ``train.jsonl`` and ``test.jsonl``) with
labels mapped to shuffled integers, seeded per sample; LongQA takes 2 from the file's other
records (``[story text]`` placeholders, as HELMET).

Not supported: categories HELMET scores with an LLM judge (``narrativeqa``: GPT-4o "gpt-4-score";
``infbench_sum`` and ``multi_lexsum``: GPT-4o "gpt-4-f1") raise an error saying so, as do
re-ranking and citation (other metrics pipelines). A file whose records lack a category's
fields, including a LongBench v2 file, is an error naming the missing fields.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from topkattn.errors import InputError, MissingFileError
from topkattn.tasks.base import (Sample, Task, TokenizerLike, check_length, exact_match_score,
                                 render_prompt)
from topkattn.tasks.files import check_fields, fit_context, read_records, seeded_pick, \
    truncate_end

LENGTH_SETTINGS: dict[str, int] = {"4k": 4096, "8k": 8192, "16k": 16384, "32k": 32768,
                                   "64k": 65536, "128k": 131072}
_SETTINGS = tuple(LENGTH_SETTINGS)
OMITTED = " ... [the rest of the text is omitted]"


# --------------------------------------------------------------------------------------------
# Metrics (HELMET utils.py).


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower, drop punctuation, drop articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _flat(answers) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    out: list[str] = []
    for a in answers:
        out.extend(str(x) for x in a) if isinstance(a, (list, tuple)) else out.append(str(a))
    return out


def exact_match(prediction: str, answers) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in _flat(answers)))


def substring_exact_match(prediction: str, answers) -> float:
    """1.0 when a normalised gold answer occurs in the normalised prediction."""
    p = normalize_answer(prediction)
    return float(any(normalize_answer(a) in p for a in _flat(answers)))


def ruler_recall(prediction: str, answers) -> float:
    """HELMET's RULER recall: the fraction of gold values in the output (lower-case substring)."""
    gold = _flat(answers)
    if not gold:
        return 0.0
    p = prediction.lower()
    return sum(a.lower() in p for a in gold) / len(gold)


def _rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenizer without stemming: lower case, ``[a-z0-9]+`` runs."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_f1(prediction: str, reference: str, use_package: bool = True) -> float:
    """ROUGE-L F1 of one prediction against one reference.

    Uses ``rouge_score`` (Porter stemmer, as HELMET) when installed and ``use_package``; else
    LCS over rouge_score's tokens, unstemmed.
    """
    if use_package:
        try:
            from rouge_score import rouge_scorer  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
            return float(sc.score(target=reference, prediction=prediction)["rougeL"].fmeasure)
    p, r = _rouge_tokens(prediction), _rouge_tokens(reference)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def rouge_l(prediction: str, answers) -> float:
    """The best ROUGE-L F1 over the gold answers."""
    return max((rouge_l_f1(prediction, a) for a in _flat(answers)), default=0.0)


def parse_output(output: str, prefix: str = "Answer:") -> str | None:
    """HELMET's ``parse_output``: the text after ``prefix`` on its line, else the first line."""
    pats = [re.compile(f"(?:{re.escape(prefix)})(.*)(?:\n|$)", flags=re.IGNORECASE),
            re.compile(r"(?:^)(.*)(?:\n|$)")]
    for pat in pats:
        m = pat.search(output)
        if m is not None:
            return re.sub(f"^{re.escape(prefix)}", "", m[1].strip(), flags=re.IGNORECASE).strip()
    return None  # pragma: no cover - the second pattern always matches


METRICS = {"substring_exact_match": substring_exact_match, "exact_match": exact_match,
           "ruler_recall": ruler_recall, "rougeL_f1": rouge_l}


# --------------------------------------------------------------------------------------------
# Categories.


def _per_setting(fmt: str, values) -> tuple[str, ...]:
    return tuple(fmt.format(v) for v in values)


@dataclass(frozen=True)
class Category:
    """How HELMET builds, bounds and scores one dataset."""

    name: str
    group: str
    kind: str  # json_kv | ruler | rag | icl | infbench_qa | infbench_choice
    metric: str
    max_new_tokens: int
    chat: bool = False
    stop_new_line: bool = False
    files: tuple[str, ...] = ()  # one per setting, under data/
    demo_file: str = ""
    ruler_kind: str = ""  # niah | niah_mv
    label_field: str = ""
    shots: tuple[int, ...] = ()  # ICL shots per setting
    popularity_threshold: float | None = None
    hf_dataset: str = ""


_K_RAG = ("20", "50", "105", "220", "440", "1000")
CATEGORIES: dict[str, Category] = {c.name: c for c in [
    Category("json_kv", "recall", "json_kv", "substring_exact_match", 100,
             files=_per_setting("json_kv/test_k{}_dep6.jsonl",
                                ("50", "105", "220", "440", "900", "1800"))),
    Category("ruler_niah_mk_2", "recall", "ruler", "ruler_recall", 50, ruler_kind="niah",
             files=_per_setting("ruler/niah_multikey_2/validation_{}.jsonl",
                                LENGTH_SETTINGS.values())),
    Category("ruler_niah_mk_3", "recall", "ruler", "ruler_recall", 100, ruler_kind="niah",
             files=_per_setting("ruler/niah_multikey_3/validation_{}.jsonl",
                                LENGTH_SETTINGS.values())),
    Category("ruler_niah_mv", "recall", "ruler", "ruler_recall", 50, ruler_kind="niah_mv",
             files=_per_setting("ruler/niah_multivalue/validation_{}.jsonl",
                                LENGTH_SETTINGS.values())),
    Category("nq", "rag", "rag", "substring_exact_match", 20, stop_new_line=True,
             files=_per_setting("kilt/nq-dev-multikilt_1000_k{}_dep6.jsonl", _K_RAG),
             demo_file="kilt/nq-train-multikilt_1000_k3_dep6.jsonl"),
    Category("triviaqa", "rag", "rag", "substring_exact_match", 20, stop_new_line=True,
             files=_per_setting("kilt/triviaqa-dev-multikilt_1000_k{}_dep6.jsonl", _K_RAG),
             demo_file="kilt/triviaqa-train-multikilt_1000_k3_dep6.jsonl"),
    Category("hotpotqa", "rag", "rag", "substring_exact_match", 20, stop_new_line=True,
             files=_per_setting("kilt/hotpotqa-dev-multikilt_1000_k{}_dep3.jsonl", _K_RAG),
             demo_file="kilt/hotpotqa-train-multikilt_1000_k3_dep3.jsonl"),
    Category("popqa", "rag", "rag", "substring_exact_match", 20, stop_new_line=True,
             files=_per_setting("kilt/popqa_test_1000_k{}_dep6.jsonl", _K_RAG),
             demo_file="kilt/popqa_test_1000_k3_dep6.jsonl", popularity_threshold=3.0),
    Category("trec_coarse", "icl", "icl", "exact_match", 20, stop_new_line=True,
             label_field="coarse_label", shots=(200, 400, 800, 1600, 3300, 6600),
             hf_dataset="CogComp/trec"),
    Category("trec_fine", "icl", "icl", "exact_match", 20, stop_new_line=True,
             label_field="fine_label", shots=(200, 400, 800, 1600, 3200, 6400),
             hf_dataset="CogComp/trec"),
    Category("banking77", "icl", "icl", "exact_match", 20, stop_new_line=True,
             label_field="label", shots=(180, 360, 720, 1450, 2900, 5900),
             hf_dataset="PolyAI/banking77"),
    Category("clinic150", "icl", "icl", "exact_match", 20, stop_new_line=True,
             label_field="intent", shots=(220, 440, 880, 1750, 3525, 7050),
             hf_dataset="clinc_oos (plus)"),
    Category("nlu", "icl", "icl", "exact_match", 20, stop_new_line=True,
             label_field="label", shots=(250, 510, 1020, 2040, 4080, 8296),
             hf_dataset="xingkunliuxtracta/nlu_evaluation_data"),
    Category("infbench_qa", "longqa", "infbench_qa", "rougeL_f1", 10, chat=True,
             hf_dataset="xinrongzhang2022/InfiniteBench (longbook_qa_eng)"),
    Category("infbench_choice", "longqa", "infbench_choice", "exact_match", 10, chat=True,
             hf_dataset="xinrongzhang2022/InfiniteBench (longbook_choice_eng)"),
]}
JUDGED: dict[str, str] = {
    "narrativeqa": "HELMET scores NarrativeQA with a GPT-4o judge (gpt-4-score)",
    "infbench_sum": "HELMET scores InfiniteBench summarisation with a GPT-4o judge (gpt-4-f1)",
    "multi_lexsum": "HELMET scores Multi-LexSum summarisation with a GPT-4o judge (gpt-4-f1)",
    "summ": "HELMET scores summarisation with a GPT-4o judge (gpt-4-f1)",
}
GROUPS: dict[str, tuple[str, ...]] = {}
for _c in CATEGORIES.values():
    GROUPS.setdefault(_c.group, ())
    GROUPS[_c.group] += (_c.name,)

_REQUIRED: dict[str, list] = {
    "json_kv": ["context", "question", "answer", "num_kvs"],
    "ruler": ["context", ("query", "question"), ("outputs", "answer")],
    "rag": ["question", "answers", ("ctxs", "context")],
    "infbench_qa": ["context", "input", "answer"],
    "infbench_choice": ["context", "input", "answer", "options"],
}
_LB_FIELDS = ("choice_A", "choice_B", "choice_C", "choice_D")


def allowed_categories() -> str:
    """The category names grouped as HELMET groups them (for error messages)."""
    return "; ".join(f"{g}: {', '.join(n)}" for g, n in GROUPS.items())


def get_category(name: str) -> Category:
    """The category ``name``; an LLM-judged or unknown one is an error naming the allowed."""
    if name in CATEGORIES:
        return CATEGORIES[name]
    if name in JUDGED:
        raise InputError(f"HELMET category {name!r} is not supported: {JUDGED[name]}, which "
                         f"topkattn does not run (skip it); supported: {allowed_categories()}")
    raise InputError(f"unknown HELMET category {name!r}; allowed: {allowed_categories()}")


def setting_for(length: int, setting: str | None = None) -> str:
    """The HELMET length setting: ``setting`` when given, else the largest <= ``length``."""
    if setting is not None:
        if setting not in LENGTH_SETTINGS:
            raise InputError(f"unknown HELMET length setting {setting!r}; allowed: "
                             f"{', '.join(_SETTINGS)}")
        return setting
    fit = [s for s, v in LENGTH_SETTINGS.items() if v <= length]
    return fit[-1] if fit else _SETTINGS[0]


# --------------------------------------------------------------------------------------------
# The task.


@dataclass
class HelmetCategoryTask(Task):
    """One HELMET dataset read from ``path`` (a file, or HELMET's ``data/`` folder).

    Attributes:
        category: a `CATEGORIES` name.
        setting: pin the length setting (``"8k"`` ...); None follows the evaluation length.
        chat: apply the chat template; None is HELMET's choice for the category.
        shots: demonstrations (None: HELMET's 2 for json_kv, RAG and LongQA; ICL's per setting).
    """

    category: str = "json_kv"
    path: str = ""
    setting: str | None = None
    chat: bool | None = None
    shots: int | None = None
    name: str = ""
    max_new_tokens: int = 0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.spec = get_category(self.category)
        if self.setting is not None:
            setting_for(0, self.setting)
        self.name = self.name or f"helmet_{self.category}"
        self.max_new_tokens = self.max_new_tokens or self.spec.max_new_tokens
        if self.chat is None:
            self.chat = self.spec.chat

    # ---- files ------------------------------------------------------------------------------

    def resolve(self, length: int) -> tuple[Path, Path | None, str]:
        """(test file, demo file or None, setting) for an evaluation length."""
        setting = setting_for(length, self.setting)
        p = Path(self.path).expanduser()
        if p.is_file():
            demo = None
            if self.spec.demo_file:
                cand = p.parent / Path(self.spec.demo_file).name
                demo = cand if cand.is_file() and cand != p else None
                if demo is None and self.spec.name == "popqa":
                    demo = p  # HELMET's PopQA demos come from the test file (other questions)
            return p, demo, setting
        if not p.is_dir():
            raise MissingFileError(f"HELMET file or folder not found: {self.path!r}")
        if self.spec.kind == "icl" and (p / "test.jsonl").is_file():
            train = p / "train.jsonl"
            return p / "test.jsonl", (train if train.is_file() else None), setting
        if not self.spec.files:
            raise InputError(f"HELMET {self.category!r} is not in HELMET's data download (HELMET "
                             f"loads {self.spec.hf_dataset} from Hugging Face): export it to a "
                             f"JSONL file and pass the file, not the folder {self.path!r}")
        rel = self.spec.files[_SETTINGS.index(setting)]
        for root in (p, p / "data"):
            if (root / rel).is_file():
                demo = root / self.spec.demo_file if self.spec.demo_file else None
                return root / rel, (demo if demo and demo.is_file() else None), setting
        raise MissingFileError(f"HELMET {self.category} {setting} file {rel!r} not found under "
                               f"{self.path!r} (nor its data/ folder)")

    def _read(self, path: Path) -> list[dict]:
        key = str(path)
        if key not in self._cache:
            recs = read_records(path)
            self.check(recs, key)
            self._cache[key] = recs
        return self._cache[key]

    def check(self, records: list[dict], path: str) -> None:
        """Raise one line naming the first record lacking this category's fields."""
        what = f"HELMET {self.category}"
        kind = self.spec.kind
        if kind == "icl":
            lf = self.spec.label_field
            for i, r in enumerate(records):
                raw = "text" in r and lf in r
                built = all(k in r for k in ("context", "question")) and (
                    "answer" in r or "label" in r)
                if not (raw or built):
                    miss = [k for k in ("text", lf) if k not in r]
                    raise InputError(f"{path!r}: record {i} lacks {what} fields {miss} (or the "
                                     "prebuilt 'context', 'question', 'answer|label'); it has: "
                                     f"{', '.join(sorted(r)[:12])}")
        else:
            req = list(_REQUIRED[kind])
            if kind == "ruler" and self.spec.ruler_kind.startswith("niah"):
                req.append("type_needle_v")
            check_fields(records, req, path, what)
        for i, r in enumerate(records):
            if all(k in r for k in _LB_FIELDS):
                raise InputError(f"{path!r}: record {i} is a LongBench v2 record (it has "
                                 f"choice_A..choice_D), not HELMET {self.category}; use "
                                 f"--task longbench_v2:{path}")

    # ---- prompts ----------------------------------------------------------------------------

    def _render(self, tokenizer: TokenizerLike, user: str, prefix: str, sep: str = "\n") -> str:
        if self.chat and getattr(tokenizer, "chat_template", None):
            return render_prompt(tokenizer, user)[0]
        return f"{user}{sep}{prefix}"

    def samples(self, tokenizer: TokenizerLike, length: int, n: int, seed: int,
                max_length: int | None = None) -> list[Sample]:
        """``n`` records of the setting's file (shuffled by ``seed``), each fitted to ``length``.

        The context's end is cut (HELMET) so that the prompt fits ``length`` tokens.
        """
        check_length(length, max_length)
        test_path, demo_path, setting = self.resolve(length)
        records = self._read(test_path)
        demos = self._read(demo_path) if demo_path is not None else None
        pool = records
        if self.spec.popularity_threshold is not None:
            pool = [r for r in records if "s_pop" not in r
                    or math.log10(max(float(r["s_pop"]), 1e-9)) < self.spec.popularity_threshold]
        build = getattr(self, f"_build_{self.spec.kind}")
        out = []
        for i, r in seeded_pick(pool, n, seed):
            parts = build(r, i, pool, demos, setting, seed)
            user_t, context, prefix, answers, sep, postfix = parts

            def render(ctx: str, user_t=user_t, prefix=prefix, sep=sep) -> str:
                return self._render(tokenizer, user_t.replace("\x00CONTEXT\x00", ctx), prefix,
                                    sep)

            prompt, n_tok = fit_context(
                tokenizer, context, length, render,
                cut=lambda tok, text, m, postfix=postfix: truncate_end(tok, text, m, postfix))
            rid = r.get("id", r.get("_id", r.get("index", i)))
            out.append(Sample(
                id=f"{self.category}-{rid}", task=self.name, prompt=prompt,
                answers=tuple(answers), length=length,
                depth=r.get("depth") if isinstance(r.get("depth"), (int, float)) else None,
                n_tokens=n_tok,
                metadata={"category": self.category, "setting": setting,
                          "file": test_path.name, "metric": self.spec.metric,
                          "answer_prefix": "" if self.chat else prefix},
            ))
        return out

    # Each builder returns (user template with a context slot, context, answer prefix,
    # answers, separator before the prefix, postfix of a cut context).

    def _n_shots(self, default: int) -> int:
        return default if self.shots is None else self.shots

    def _build_json_kv(self, r, i, pool, demos, setting, seed):
        shots = self._n_shots(2)
        demo = "\n\n".join(f"Key: {k}\nCorresponding value: {v}"
                           for k, v in list(r.get("demos") or [])[:shots])
        demo += "\n\n" if demo else ""
        user = ("\x00CONTEXT\x00\n\nExtract the value corresponding to the specified key in "
                f"the JSON object below.\n\n{demo}Key: {r['question']}")
        return user, str(r["context"]), "Corresponding value:", _flat(r["answer"]), "\n", ""

    def _build_ruler(self, r, i, pool, demos, setting, seed):
        q = r.get("query", r.get("question", ""))
        v = r.get("type_needle_v", "")
        if self.spec.ruler_kind == "niah_mv":
            user = (f"Some special magic {v} are hidden within the following text. Make sure "
                    f"to memorize it. I will quiz you about the {v} afterwards.\n\x00CONTEXT\x00"
                    f"\nWhat are all the special magic {v} for {q} mentioned in the provided "
                    "text?")
            prefix = f"The special magic {v} for {q} mentioned in the provided text are"
        else:
            user = (f"A special magic {v} is hidden within the following text. Make sure to "
                    f"memorize it. I will quiz you about the {v} afterwards.\n\x00CONTEXT\x00\n"
                    f"What is the special magic {v} for {q} mentioned in the provided text?")
            prefix = f"The special magic {v} for {q} mentioned in the provided text is"
        ans = r.get("answer", r.get("outputs"))
        return user, str(r["context"]), prefix, _flat(ans), "\n", ""

    @staticmethod
    def _docs(rec: dict) -> str:
        if "ctxs" in rec:
            return "\n\n".join(f"Document (Title: {c.get('title', '')}): {c.get('text', '')}"
                               for c in rec["ctxs"])
        return str(rec.get("context", ""))

    def _build_rag(self, r, i, pool, demos, setting, seed):
        demo_text = ""
        shots = self._n_shots(2)
        if demos and shots > 0:
            key = "id" if "id" in r else "question"
            h = int(hashlib.sha256(str(r.get(key)).encode("utf-8")).hexdigest(), 16) % 2 ** 31
            cand = [d for d in demos if d.get(key) != r.get(key)]
            random.Random(h).shuffle(cand)
            seen, picked = set(), []
            for d in cand:
                if d.get(key) in seen:
                    continue
                seen.add(d.get(key))
                picked.append(d)
                if len(picked) == shots:
                    break
            demo_text = "\n\n".join(
                f"{self._docs(d)}\n\nQuestion: {d['question']}\nAnswer: {_flat(d['answers'])[0]}"
                for d in picked) + ("\n\n" if picked else "")
        user = ("Use the given documents to write a concise and short answer to the question. "
                "Write your answer in the following format:\nAnswer: [answer]\n\n"
                f"{demo_text}\x00CONTEXT\x00\n\nQuestion: {r['question']}")
        return user, self._docs(r), "Answer:", _flat(r["answers"]), "\n", ""

    def _build_icl(self, r, i, pool, demos, setting, seed):
        user_t = ("Use the provided mapping from the text to label to assign a label to the "
                  "text. Only output \"label: {label}\" and nothing else. \n\n\x00CONTEXT\x00\n\n")
        if "text" not in r or self.spec.label_field not in r:  # prebuilt record
            ans = r.get("answer", r.get("label"))
            return (user_t + str(r["question"]), str(r["context"]), "label:", _flat(ans), "\n",
                    "")
        lf = self.spec.label_field
        train = [d for d in (demos or pool) if d is not r and "text" in d and lf in d]
        labels = sorted({str(d[lf]) for d in train} | {str(r[lf])},
                        key=lambda x: (not x.lstrip("-").isdigit(), int(x) if
                                       x.lstrip("-").isdigit() else 0, x))
        local = (int(hashlib.sha256(str(r["text"]).encode("utf-8")).hexdigest(), 16) + seed) \
            % 2 ** 31
        shots = self._n_shots(self.spec.shots[_SETTINGS.index(setting)])
        chosen = _balanced(train, lf, shots, local)
        mapping = list(range(len(labels)))
        random.Random(local).shuffle(mapping)
        to_int = {lab: mapping[j] for j, lab in enumerate(labels)}
        context = "\n\n".join(f"{d['text']}\nlabel: {to_int[str(d[lf])]}" for d in chosen)
        return user_t + str(r["text"]), context, "label:", [str(to_int[str(r[lf])])], "\n", ""

    def _infbench_demo(self, r, pool, seed, choice: bool) -> str:
        shots = self._n_shots(2)
        others = [d for d in pool if d is not r]
        random.Random(seed).shuffle(others)
        parts = []
        for d in others[:shots]:
            if choice:
                letter, _ = _choice_answer(d)
                parts.append(f"[story text]\nQuestion: {d['input']}\nOptions:\n{_options(d)}\n"
                             f"Answer: {letter}")
            else:
                parts.append(f"[story text]\nQuestion: {d['input']}\nAnswer: "
                             f"{_flat(d['answer'])[0]}")
        if not parts:
            return ""
        return "For example:\n\n" + "\n\n".join(parts) + "\n\nNow, read the following story:\n\n"

    def _build_infbench_qa(self, r, i, pool, demos, setting, seed):
        demo = self._infbench_demo(r, pool, seed, choice=False)
        user = ("You are given a story and a question. Answer the question as concisely as you "
                f"can, using a single phrase if possible.\n\n{demo}\x00CONTEXT\x00\n\n"
                f"Question: {r['input']}")
        return user, str(r["context"]), "Answer:", _flat(r["answer"]), "\n\n", OMITTED

    def _build_infbench_choice(self, r, i, pool, demos, setting, seed):
        demo = self._infbench_demo(r, pool, seed, choice=True)
        letter, full = _choice_answer(r)
        user = ("You are given a story and a question with multiple choices. Choose the best "
                "answer from the options provided. Only one of the following options is correct, "
                "output the answer using one single letter (A, B, C, or D). Don't say anything "
                f"else.\n\n{demo}\x00CONTEXT\x00\n\nQuestion: {r['input']}\nOptions:\n"
                f"{_options(r)}")
        return user, str(r["context"]), "Answer:", [letter, full], "\n\n", OMITTED

    # ---- scoring ----------------------------------------------------------------------------

    def score(self, prediction: str, sample: Sample) -> float:
        """HELMET's metric for the category (see the module docstring)."""
        pred = prediction
        if self.spec.stop_new_line:
            lead = len(pred) - len(pred.lstrip())
            pred = pred[:lead] + pred[lead:].split("\n", 1)[0]
        answers = list(sample.answers)
        kind, metric = self.spec.kind, METRICS[self.spec.metric]
        if kind == "ruler":
            return ruler_recall(pred, answers)
        if kind == "icl":
            parsed = parse_output(pred, "label:")
            return metric(parsed, answers) if parsed is not None else 0.0
        prefix = "corresponding value:" if kind == "json_kv" else "Answer:"
        parsed = parse_output(pred, prefix)
        if kind == "infbench_choice":
            best = max(exact_match(pred, answers),
                       exact_match(parsed, answers) if parsed is not None else 0.0)
            if len(answers) > 1 and answers[1].lower() in pred.lower():
                best = 1.0
            return best
        best = metric(pred, answers)
        if parsed is not None:
            best = max(best, metric(parsed, answers))
        return float(best)


def _options(r: dict) -> str:
    opts = list(r["options"]) + [""] * 4
    return "A. {}\nB. {}\nC. {}\nD. {}".format(*opts[:4])


def _choice_answer(r: dict) -> tuple[str, str]:
    gold = _flat(r["answer"])[0]
    opts = [str(o) for o in r["options"]]
    if gold not in opts:
        raise InputError(f"InfiniteBench choice record {r.get('id')!r}: answer {gold!r} is not "
                         f"one of its options {opts}")
    letter = "ABCD"[opts.index(gold)]
    return letter, f"{letter}. {gold}"


def _balanced(data: list[dict], label_field: str, shots: int, seed: int) -> list[dict]:
    """HELMET's ``balance_labels``: rounds of one example per label, shuffled, cut to ``shots``."""
    if not data or shots <= 0:
        return []
    rand = random.Random(seed)
    by_label: dict[str, list[dict]] = {}
    for x in data:
        by_label.setdefault(str(x[label_field]), []).append(x)
    rounds = math.ceil(shots / len(by_label))
    sets: list[list[dict]] = [[] for _ in range(rounds)]
    for samples in by_label.values():
        idx = rand.sample(range(len(samples)), rounds % len(samples))
        while len(idx) < rounds:
            idx += rand.sample(range(len(samples)), min(rounds - len(idx), len(samples)))
        for j, k in enumerate(idx):
            sets[j].append(samples[k])
    for s in sets:
        rand.shuffle(s)
    return [x for s in sets for x in s][:shots]


# --------------------------------------------------------------------------------------------
# The older generic reader (``helmet:PATH``).


def _answers(rec: dict) -> tuple[str, ...]:
    ans = rec.get("answers", rec.get("answer"))
    if ans is None:
        return ()
    return tuple(_flat(ans)) if isinstance(ans, (list, tuple)) else (str(ans),)


@dataclass
class HelmetTask(Task):
    """Generic HELMET-style records read from ``path``; ``match`` is ``"any"`` or ``"all"``.

    Fields: ``context`` (optional), ``question`` or ``input``, ``answers`` (a list, or a list
    of lists) or ``answer``. The context is middle-truncated to fit. Scoring: ``"any"`` (1.0
    when any answer occurs in the prediction) or ``"all"`` (the fraction found). Prefer
    `HelmetCategoryTask` (``helmet:<category>:PATH``) for HELMET's own prompts and metrics.
    """

    path: str = ""
    name: str = "helmet"
    match: str = "any"
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.match not in ("any", "all"):
            raise InputError(f"match must be 'any' or 'all', got {self.match!r}")

    def records(self) -> list[dict]:
        recs = read_records(self.path)
        for i, r in enumerate(recs):
            if all(k in r for k in _LB_FIELDS):
                raise InputError(f"{self.path!r}: record {i} is a LongBench v2 record (it has "
                                 f"choice_A..choice_D); use --task longbench_v2:{self.path}")
            if not (r.get("question") or r.get("input")) or not _answers(r):
                raise InputError(f"{self.path!r}: record {i} needs 'question' or 'input', and "
                                 "'answers' or 'answer'")
        return recs

    def samples(self, tokenizer: TokenizerLike, length: int, n: int, seed: int,
                max_length: int | None = None) -> list[Sample]:
        check_length(length, max_length)
        out = []
        for i, r in seeded_pick(self.records(), n, seed):
            question = str(r.get("question") or r.get("input"))
            context = str(r.get("context") or "")

            def render(ctx: str, question: str = question) -> str:
                user = f"{ctx}\n\n{question}" if ctx else question
                return render_prompt(tokenizer, user)[0]

            prompt, n_tok = fit_context(tokenizer, context, length, render)
            out.append(Sample(
                id=str(r.get("id", r.get("_id", f"helmet-{i}"))), task=self.name,
                prompt=prompt, answers=_answers(r), length=length, depth=r.get("depth"),
                n_tokens=n_tok, metadata={"match": self.match},
            ))
        return out

    def score(self, prediction: str, sample: Sample) -> float:
        if self.match == "all":
            return exact_match_score(prediction, sample.answers)
        return float(any(exact_match_score(prediction, (a,)) for a in sample.answers))


__all__ = ["CATEGORIES", "Category", "GROUPS", "HelmetCategoryTask", "HelmetTask", "JUDGED",
           "LENGTH_SETTINGS", "exact_match", "get_category", "normalize_answer", "parse_output",
           "rouge_l", "rouge_l_f1", "ruler_recall", "setting_for", "substring_exact_match"]
