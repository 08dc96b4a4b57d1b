"""`clippo eval` on files in the public datasets' own formats (the layouts their loaders and
official tools read: Crossmodal-3600's captions.jsonl, CLIP_benchmark's classnames / templates
/ CuPL files, VQAv2's one-line JSON scored by vqaEval.py's rules, GLUE's TSVs), and the
documented multilingual command run as written."""
import json
import random
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.eval import data as D
from clippo.eval import metrics as M
from clippo.eval.main import main as eval_main
from clippo.eval import templates as T
from clippo.model.clippo import CLIPPO

REPO = Path(__file__).resolve().parent.parent

# Crossmodal-3600's 36 languages (the keys of a captions.jsonl line besides image/key and
# image/locale), in the order the file has them
XM3600_LANGUAGES = ["ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr",
                    "hi", "hr", "hu", "id", "it", "he", "ja", "ko", "mi", "nl", "no", "pl",
                    "pt", "quz", "ro", "ru", "sv", "sw", "te", "th", "tr", "uk", "vi", "zh"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random 32-px CLIPPO as a save_pretrained directory (scores need not be good here:
    the tests compare clippo's numbers with a reference computed on the same model)."""
    torch.manual_seed(0)
    model = CLIPPO(None, image_size=32, patch_size=16, width=32, depth=1, num_heads=2,
                   mlp_dim=64, out_dim=16).eval()
    d = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(str(d))
    return d


def _save_images(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        colour = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.new("RGB", (40, 30), tuple(int(c) for c in colour)).save(folder / name)


# -- 1. Crossmodal-3600 ----------------------------------------------------------------------------

def _xm3600_line(key, locale, n_captions=2):
    """One captions.jsonl line as the dataset ships it: image/key, image/locale, then per
    language the raw captions and two tokenised forms of them."""
    line = {"image/key": key, "image/locale": locale}
    for lang in XM3600_LANGUAGES:
        raw = [f"{lang}: Picture {key}, caption {i}." for i in range(n_captions)]
        tok = [c.replace(",", " ,").replace(".", " .").replace(":", " :") for c in raw]
        line[lang] = {"caption": raw, "caption/tokenized": tok,
                      "caption/tokenized/lowercase": [t.lower() for t in tok]}
    return json.dumps(line, ensure_ascii=False)


def _xm3600_layout(root, keys=("000411001ff7dd4f", "00c84ec8d1fa6a69", "0a3b1a9c0f6e0c66")):
    """The official layout: xm3600/captions.jsonl and xm3600/images/<key>.jpg."""
    d = root / "xm3600"
    _save_images(d / "images", [f"{k}.jpg" for k in keys])
    locales = ["bn", "en", "fil"]
    (d / "captions.jsonl").write_text(
        "".join(_xm3600_line(k, locales[i % 3], n_captions=1 + i % 2) + "\n"
                for i, k in enumerate(keys)), encoding="utf-8")
    return d, list(keys)


def test_xm3600_languages_are_only_the_language_entries(tmp_path):
    d, keys = _xm3600_layout(tmp_path)
    pairs, langs = D.read_xm3600(d / "captions.jsonl", image_root=d / "images")
    assert langs == sorted(XM3600_LANGUAGES) and "image/locale" not in langs
    assert [p for p, _ in pairs] == [str(d / "images" / f"{k}.jpg") for k in keys]
    lines = [json.loads(s) for s in (d / "captions.jsonl").read_text().splitlines()]
    for (_, caps), line in zip(pairs, lines):  # the raw captions, not the tokenised ones
        assert caps == {lang: line[lang]["caption"] for lang in sorted(XM3600_LANGUAGES)}
    pairs, langs = D.read_xm3600(d / "captions.jsonl", d / "images", languages=["zh", "de"])
    assert langs == ["zh", "de"] and list(pairs[0][1]) == ["zh", "de"]


def _documented_commands(task):
    """`clippo eval TASK ...` commands of README.md and docs/eval.md (continued lines joined,
    comments cut)."""
    found = []
    for doc in ("README.md", "docs/eval.md"):
        text = (REPO / doc).read_text(encoding="utf-8").replace("\\\n", " ")
        for line in text.splitlines():
            if re.match(rf"clippo eval\s+{task}\b", line):
                found.append((doc, shlex.split(line.split(" #")[0])))
    return found


def test_documented_multilingual_command_runs_on_the_official_layout(tmp_path, tiny_model_dir,
                                                                     monkeypatch):
    commands = _documented_commands("multilingual")
    assert {doc for doc, _ in commands} == {"README.md", "docs/eval.md"}
    _xm3600_layout(tmp_path)
    (tmp_path / "DIR").symlink_to(tiny_model_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    runs = {}
    for doc, argv in commands:  # identical commands run once
        runs.setdefault(tuple(argv), doc)
    for argv, doc in runs.items():
        argv = list(argv)
        assert argv[:2] == ["clippo", "eval"]
        assert eval_main(argv[2:] + ["--quiet", "--device", "cpu"]) == 0, (doc, argv)
        res = json.loads((tmp_path / "clippo-eval" / "multilingual.json").read_text())
        assert res["skipped"] == 0, (doc, res["skipped_files"])
        m = res["metrics"]
        assert m["num_images"] == 3
        assert sorted(m["per_language"]) == sorted(XM3600_LANGUAGES), doc
        # the headline is the mean over the 36 languages, nothing else
        for key in ("image_retrieval_recall@1", "text_retrieval_recall@1"):
            assert m[key] == pytest.approx(np.mean([v[key] for v in
                                                    m["per_language"].values()]))


# -- 2. CLIP_benchmark's classnames, templates and CuPL files ------------------------------------

CB_TEMPLATES = {  # en_zeroshot_classification_templates.json: dataset -> "{c}" templates
    "cifar10": ["a photo of a {c}.", "a blurry photo of a {c}.", "a photo of the big {c}."],
    "imagenet1k": ["a bad photo of a {c}.", "itap of a {c}.", "a origami {c}."],
    "eurosat": ["a centered satellite photo of {c}.", "a centered satellite photo of a {c}."],
    "dummy": ["a photo of a {c}"],
}
CB_CLASSNAMES = {  # en_classnames.json: dataset -> class names
    "flowers": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
    "eurosat": ["annual crop land", "forest", "brushland or shrubland"],
    "imagenet1k": ["tench", "goldfish", "missile", "missile"],  # the real list repeats names
}
CB_CUPL = {"imagenet1k": {  # cupl_prompts.json: dataset -> class -> prompts
    "tench": ["A tench is a freshwater fish.", "A tench has a greenish body."],
    "goldfish": ["A goldfish is a small orange fish."],
    "missile": ["A missile is a long, thin weapon."]}}


def _cb_file(path, doc):
    path.write_text(json.dumps(doc, indent=4), encoding="utf-8")  # the files are indented
    return path


def test_clip_benchmark_templates_and_cupl_files(tmp_path):
    t = _cb_file(tmp_path / "en_zeroshot_classification_templates.json", CB_TEMPLATES)
    assert T.load_prompts(str(t), "cifar10") == [s.replace("{c}", "{}")
                                               for s in CB_TEMPLATES["cifar10"]]
    # CLIP_benchmark looks "vtab/NAME" up under its full name, then under NAME
    assert T.load_prompts(str(t), "vtab/eurosat") == [s.replace("{c}", "{}")
                                                    for s in CB_TEMPLATES["eurosat"]]
    names = "cifar10, dummy, eurosat, imagenet1k"
    with pytest.raises(D.DataFormatError, match=rf"--dataset NAME \(one of: {names}\)"):
        T.load_prompts(str(t))
    with pytest.raises(D.DataFormatError, match=rf"no dataset 'cars' .*one of: {names}"):
        T.load_prompts(str(t), "cars")
    c = _cb_file(tmp_path / "cupl_prompts.json", CB_CUPL)
    assert T.load_prompts(str(c), "imagenet1k") == CB_CUPL["imagenet1k"]
    with pytest.raises(D.DataFormatError, match=r"--dataset NAME \(one of: imagenet1k\)"):
        T.load_prompts(str(c))
    # clippo's own per-class prompts file (no dataset level, no "{c}") stays as it was
    flat = _cb_file(tmp_path / "prompts.json", CB_CUPL["imagenet1k"])
    assert T.load_prompts(str(flat)) == CB_CUPL["imagenet1k"]


def test_clip_benchmark_classnames_file(tmp_path):
    f = _cb_file(tmp_path / "en_classnames.json", CB_CLASSNAMES)
    assert D.read_classnames(f, "eurosat") == CB_CLASSNAMES["eurosat"]
    assert D.read_classnames(f, "imagenet1k") == CB_CLASSNAMES["imagenet1k"]
    with pytest.raises(D.DataFormatError, match=r"one of: eurosat, flowers, imagenet1k"):
        D.read_classnames(f)
    with pytest.raises(D.DataFormatError, match=r"no dataset 'pets'"):
        D.read_classnames(f, "pets")
    # JSON is JSON whatever the file is called; a plain list is the names
    g = tmp_path / "names.txt"
    g.write_text(json.dumps(CB_CLASSNAMES, indent=4))
    with pytest.raises(D.DataFormatError, match=r"keyed by dataset name"):
        D.read_classnames(g)
    g.write_text(json.dumps(["cat", "dog"]))
    assert D.read_classnames(g) == ["cat", "dog"]


def _zeroshot_csv(root, classes, per_class=2):
    names = [f"{c}_{i}.png" for c in range(len(classes)) for i in range(per_class)]
    _save_images(root, names, seed=1)
    (root / "data.csv").write_text("filepath,label\n" + "".join(
        f"{n},{n.split('_')[0]}\n" for n in names))
    return root / "data.csv"


def test_zeroshot_cli_reads_clip_benchmark_files(tmp_path, tiny_model_dir):
    """en_classnames.json + en_zeroshot_classification_templates.json with --dataset score as
    the same names and templates given as plain lines; without --dataset the run stops."""
    data = _zeroshot_csv(tmp_path / "d", CB_CLASSNAMES["eurosat"])
    names = _cb_file(tmp_path / "en_classnames.json", CB_CLASSNAMES)
    templates = _cb_file(tmp_path / "en_zeroshot_classification_templates.json", CB_TEMPLATES)
    base = ["zeroshot", "--model", str(tiny_model_dir), "--data", str(data), "--quiet",
            "--device", "cpu"]
    out = tmp_path / "cb.json"
    assert eval_main(base + ["--classnames", str(names), "--templates", str(templates),
                             "--dataset", "eurosat", "--out", str(out)]) == 0
    ours = json.loads(out.read_text())
    (tmp_path / "names.txt").write_text("\n".join(CB_CLASSNAMES["eurosat"]) + "\n")
    (tmp_path / "t.txt").write_text("\n".join(CB_TEMPLATES["eurosat"]) + "\n")
    ref_out = tmp_path / "lines.json"
    assert eval_main(base + ["--classnames", str(tmp_path / "names.txt"), "--templates",
                             str(tmp_path / "t.txt"), "--out", str(ref_out)]) == 0
    ref = json.loads(ref_out.read_text())
    assert ours["num_classes"] == 3 and ours["metrics"] == ref["metrics"]


@pytest.mark.parametrize("flag", ["--classnames", "--templates"])
def test_zeroshot_cli_without_dataset_names_the_entries(tmp_path, tiny_model_dir, capsys, flag):
    data = _zeroshot_csv(tmp_path / "d", CB_CLASSNAMES["eurosat"])
    doc = CB_CLASSNAMES if flag == "--classnames" else CB_TEMPLATES
    f = _cb_file(tmp_path / "file.json", doc)
    (tmp_path / "names.txt").write_text("\n".join(CB_CLASSNAMES["eurosat"]))
    names = [] if flag == "--classnames" else ["--classnames", str(tmp_path / "names.txt")]
    rc = eval_main(["zeroshot", "--model", str(tiny_model_dir), "--data", str(data), flag,
                    str(f), "--quiet", "--device", "cpu", "--out", str(tmp_path / "r.json")]
                   + names)
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "--dataset NAME" in err and ", ".join(sorted(doc)) in err
    assert not (tmp_path / "r.json").exists()


def test_documented_clip_benchmark_command(tmp_path, tiny_model_dir, monkeypatch):
    commands = [argv for _, argv in _documented_commands("zeroshot") if "--dataset" in argv]
    assert commands
    (tmp_path / "DIR").symlink_to(tiny_model_dir, target_is_directory=True)
    _zeroshot_csv(tmp_path / "eurosat", CB_CLASSNAMES["eurosat"]).rename(
        tmp_path / "eurosat" / "test.csv")
    _cb_file(tmp_path / "en_classnames.json", CB_CLASSNAMES)
    _cb_file(tmp_path / "en_zeroshot_classification_templates.json", CB_TEMPLATES)
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        assert eval_main(argv[2:] + ["--quiet", "--device", "cpu"]) == 0, argv
        res = json.loads((tmp_path / "clippo-eval" / "zeroshot.json").read_text())
        assert res["num_classes"] == 3 and res["metrics"]["num_samples"] == 6


def test_the_installed_clip_benchmark_files():
    """The files CLIP_benchmark itself ships, where it is installed."""
    cb = pytest.importorskip("clip_benchmark")
    d = Path(cb.__file__).parent / "datasets"
    t = d / "en_zeroshot_classification_templates.json"
    n = d / "en_classnames.json"
    if not (t.exists() and n.exists()):
        pytest.skip("clip_benchmark without its data files")
    doc = json.loads(t.read_text())
    for name in ("cifar10", "imagenet1k", "eurosat"):
        assert T.load_prompts(str(t), name) == [s.replace("{c}", "{}") for s in doc[name]]
    names = D.read_classnames(n, "imagenet1k")
    assert names == json.loads(n.read_text())["imagenet1k"] and len(names) == 1000
    if (d / "cupl_prompts.json").exists():
        cupl = T.load_prompts(str(d / "cupl_prompts.json"), "imagenet1k")
        assert set(cupl) == set(names)  # every class name has its prompts


# -- 3. VQAv2 scored by vqaEval.py's rules -------------------------------------------------------

class _OfficialVQAEval:
    """A port of vqaEval.py's answer processing and accuracy loop (GT-Vision-Lab/VQA,
    PythonEvaluationTools, after its 2021 fix), on the annotation dicts as that code holds
    them (each with an answer_id, processed in place)."""
    punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
             "@", "`", ",", "?", "!"]
    manual_map = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                  "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
                  "ten": "10"}
    articles = ["a", "an", "the"]
    period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)")
    comma_strip = re.compile(r"(\d)(\,)(\d)")

    def process_punctuation(self, in_text):
        out_text = in_text
        for p in self.punct:
            if (p + " " in in_text or " " + p in in_text) or \
                    re.search(self.comma_strip, in_text) is not None:
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        return self.period_strip.sub("", out_text, re.UNICODE)  # sic: count=32

    def process_digit_article(self, in_text):
        out = []
        for word in in_text.lower().split():
            word = self.manual_map.setdefault(word, word)
            if word not in self.articles:
                out.append(word)
        out = [M._VQA_CONTRACTIONS.get(w, w) for w in out]  # the official table (data)
        return " ".join(out)

    def accuracy(self, prediction, annotation, normalize_always=False):
        answers = annotation["answers"]
        for a in answers:
            a["answer"] = a["answer"].replace("\n", " ").replace("\t", " ").strip()
        res = prediction.replace("\n", " ").replace("\t", " ").strip()
        gt_answers = [a["answer"] for a in answers]
        if len(set(gt_answers)) > 1 or normalize_always:
            for a in answers:
                a["answer"] = self.process_digit_article(self.process_punctuation(a["answer"]))
            res = self.process_digit_article(self.process_punctuation(res))
        accs = []
        for gt in answers:
            others = [item for item in answers if item != gt]
            matching = [item for item in others if item["answer"] == res]
            accs.append(min(1, float(len(matching)) / 3))
        return float(sum(accs)) / len(accs)


def _annotation(qid, answers):
    """A VQAv2 annotation entry, as in v2_mscoco_val2014_annotations.json."""
    return {"question_type": "what is", "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                        for i, a in enumerate(answers)],
            "image_id": 42 + qid, "answer_type": "other", "question_id": qid}


# (prediction, the ten human answers): where the official rule differs from normalising both
QUIRKS = [
    ("beach", ["the beach"] * 10),          # identical answers: nothing processed -> 0
    ("the beach", ["the beach"] * 10),      # ... -> 1
    ("the beach", ["beach"] * 10),          # -> 0
    ("beach", ["the beach"] * 9 + ["beach"]),  # answers differ: all processed -> 1
    ("Yes", ["yes"] * 10),                  # no lower case either -> 0
    ("yes", ["Yes"] * 10),
    ("Two", ["2"] * 10),
    ("two", ["2"] * 7 + ["3"] * 3),
    ("dog!", ["dog"] * 10),
    ("dont know", ["don't know"] * 5 + ["dont know"] * 5),
    ("1,000", ["1000"] * 4 + ["1,000"] * 6),
    ("3.5", ["3.5"] * 9 + ["three"]),
    ("red", ["red"] * 2 + ["blue"] * 8),    # 2 matches: 0.6
    ("red ", ["red\t"] * 3 + ["Red"] * 7),  # strip, tab: identical after stripping
    ("a" + ". b" * 40, ["a" + ". b" * 40] * 9 + ["x"]),  # more than 32 periods: 8 stay
    ("somebody'd", ["somebodyd"] * 3 + ["x"] * 7),  # the table's own quirk
]


@pytest.mark.parametrize("prediction,answers", QUIRKS)
def test_vqa_accuracy_equals_the_official_rules(prediction, answers):
    ref = _OfficialVQAEval()
    official = ref.accuracy(prediction, _annotation(1, answers))
    normalized = ref.accuracy(prediction, _annotation(1, answers), normalize_always=True)
    assert M.vqa_accuracy(prediction, answers) == pytest.approx(official, abs=1e-12)
    assert M.vqa_accuracy(prediction, answers, rule="normalized") == pytest.approx(
        normalized, abs=1e-12)


def test_vqa_quirks_by_hand():
    assert M.vqa_accuracy("beach", ["the beach"] * 10) == 0.0
    assert M.vqa_accuracy("the beach", ["the beach"] * 10) == 1.0
    assert M.vqa_accuracy("beach", ["the beach"] * 10, rule="normalized") == 1.0
    assert M.vqa_accuracy("beach", ["the beach"] * 9 + ["beach"]) == 1.0
    with pytest.raises(ValueError, match="rule must be one of"):
        M.vqa_accuracy("x", ["x"], rule="lenient")


def test_vqa_accuracy_random_cases_equal_the_official_rules():
    rng = random.Random(0)
    pool = ["the beach", "beach", "Beach", "a dog", "dog", "dog.", "two", "2", "Two!", "yes",
            "Yes", "no", "dont", "don't", "1,000", "1000", "left-side", "left side", "(red)",
            "red"]
    ref = _OfficialVQAEval()
    for qid in range(300):
        base = rng.choice(pool)
        answers = [base if rng.random() < 0.6 else rng.choice(pool) for _ in range(10)]
        if qid % 3 == 0:  # all ten agree, as on many real questions
            answers = [base] * 10
        pred = rng.choice(pool + [base] * 3)
        assert M.vqa_accuracy(pred, answers) == pytest.approx(
            ref.accuracy(pred, _annotation(qid, answers)), abs=1e-12), (pred, answers)
        assert M.vqa_accuracy(pred, answers, "normalized") == pytest.approx(
            ref.accuracy(pred, _annotation(qid, answers), True), abs=1e-12), (pred, answers)


def _vqa_split(root, subtype, qids, answers):
    """v2_OpenEnded_mscoco_<subtype>_questions.json and v2_mscoco_<subtype>_annotations.json,
    each one line as distributed, and the COCO images they name."""
    questions = {"info": {"description": "VQA v2"}, "task_type": "Open-Ended",
                 "data_type": "mscoco", "license": {}, "data_subtype": subtype,
                 "questions": [{"image_id": 42 + q, "question": "Where is this?",
                                "question_id": q} for q in qids]}
    annotations = {"info": {}, "license": {}, "data_subtype": subtype, "data_type": "mscoco",
                   "annotations": [_annotation(q, answers) for q in qids]}
    qf = root / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    af = root / f"v2_mscoco_{subtype}_annotations.json"
    qf.write_text(json.dumps(questions))
    af.write_text(json.dumps(annotations))
    _save_images(root / subtype, [f"COCO_{subtype}_{42 + q:012d}.jpg" for q in qids])
    return qf, af


def test_vqa_cli_scores_by_the_official_rule_by_default(tmp_path, tiny_model_dir):
    """Every training question's ten answers are "the beach": the answer vocabulary is the
    normalised "beach", which the official rule scores 0 against ten "the beach" and the
    normalised option 1."""
    tq, ta = _vqa_split(tmp_path, "train2014", [1, 2, 3], ["the beach"] * 10)
    vq, va = _vqa_split(tmp_path, "val2014", [7, 8], ["the beach"] * 10)
    base = ["vqa", "--model", str(tiny_model_dir), "--train-data", str(tq),
            "--train-annotations", str(ta), "--train-image-root", str(tmp_path / "train2014"),
            "--data", str(vq), "--annotations", str(va), "--image-root",
            str(tmp_path / "val2014"), "--epochs", "2", "--quiet", "--device", "cpu"]
    got = {}
    for rule, extra in (("official", []), ("normalized", ["--normalize-answers"])):
        out = tmp_path / f"{rule}.json"
        assert eval_main(base + extra + ["--out", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["skipped"] == 0 and res["metrics"]["answer_rule"] == rule
        got[rule] = res["metrics"]["vqa_accuracy"]
    ref = _OfficialVQAEval()
    assert got["official"] == ref.accuracy("beach", _annotation(7, ["the beach"] * 10)) == 0.0
    assert got["normalized"] == 1.0


# -- 5. GLUE's TSV files ---------------------------------------------------------------------------

# (task, dev file header + one row, test file header + one row), as GLUE's downloads lay them out
MNLI_COLUMNS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                "sentence2"]
GLUE_LAYOUTS = [
    ("cola", None, "gj04\t1\t\tThe sailors rode the breeze.",
     "index\tsentence", "0\tBill whistled past the house."),
    ("sst2", "sentence\tlabel", "it 's a charming journey . \t1",
     "index\tsentence", "0\tuneasy mishmash of styles ."),
    ("mrpc", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
     "1\t1355540\t1355592\tHe said x.\tX, he said.",
     "index\t#1 ID\t#2 ID\t#1 String\t#2 String",
     "0\t1089874\t1089925\tPCCW said.\tPCCW's chief said."),
    ("qqp", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
     "201359\t303345\t303346\tWhy?\tWhy not?\t0",
     "id\tquestion1\tquestion2", "0\tWould you?\tCould you?"),
    ("stsb",
     "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
     "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man plays.\tA man sings.\t2.500",
     "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2",
     "0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl sings.\tA girl walks."),
    ("mnli", "\t".join(MNLI_COLUMNS + ["label1", "label2", "label3", "label4", "label5",
                                       "gold_label"]),
     "\t".join(["0", "63735", "63735n", "slate", "( x )", "( y )", "(ROOT x)", "(ROOT y)",
                "The new rights are nice enough", "Everyone really likes the rights",
                "neutral", "entailment", "neutral", "neutral", "neutral", "neutral"]),
     "\t".join(MNLI_COLUMNS),
     "\t".join(["0", "31193", "31193n", "government", "( x )", "( y )", "(ROOT x)", "(ROOT y)",
                "Conceptually cream skimming has two dimensions", "Product and geography"])),
    ("qnli", "index\tquestion\tsentence\tlabel", "0\tWhat came?\tThe rain came.\tentailment",
     "index\tquestion\tsentence", "0\tWhat is it?\tIt is a test."),
    ("rte", "index\tsentence1\tsentence2\tlabel", "0\tDana won.\tDana lost.\tnot_entailment",
     "index\tsentence1\tsentence2", "0\tMaude and Dora saw trains.\tTrains exist."),
    ("wnli", "index\tsentence1\tsentence2\tlabel", "0\tI stuck a pin.\tThe pin stuck.\t1",
     "index\tsentence1\tsentence2", "0\tThe cat sat.\tIt sat."),
]


@pytest.mark.parametrize("task,dev_header,dev_row,test_header,test_row", GLUE_LAYOUTS,
                         ids=[t[0] for t in GLUE_LAYOUTS])
def test_glue_dev_files_read_and_test_files_say_they_have_no_labels(
        tmp_path, task, dev_header, dev_row, test_header, test_row):
    dev = tmp_path / ("dev_matched.tsv" if task == "mnli" else "dev.tsv")
    dev.write_text((dev_header + "\n" if dev_header else "") + dev_row + "\n")
    a, b, y = D.read_glue_tsv(dev, task)
    assert len(a) == len(y) == 1 and a[0].strip()
    test = tmp_path / ("test_matched.tsv" if task == "mnli" else "test.tsv")
    test.write_text(test_header + "\n" + test_row + "\n")
    with pytest.raises(D.DataFormatError) as e:
        D.read_glue_tsv(test, task)
    msg = str(e.value)
    assert msg.startswith(f"{test}:1: no labels") and "test split" in msg
    assert "--test DATA/" + ("dev_matched.tsv" if task == "mnli" else "dev.tsv") in msg
    assert "--text-a-key" not in msg and "--text-b-key" not in msg


def test_glue_other_layout_points_to_custom(tmp_path):
    f = tmp_path / "dev.tsv"
    f.write_text("premise\thypothesis\tlabel\nA.\tB.\t0\n")  # the HF export, not GLUE's TSV
    with pytest.raises(D.DataFormatError, match=r"no column 'sentence1' .*not GLUE's mnli "
                                                r"layout .*--task custom"):
        D.read_glue_tsv(f, "mnli")
    custom = D.GlueTask("custom", "premise", None, "gold", ["0", "1"])
    with pytest.raises(D.DataFormatError, match=r"set --label-key 'gold'"):
        D.read_glue_tsv(f, custom)


def _mnli_folder(root, n_train=24, n_dev=10):
    rng = random.Random(0)
    labels = ["entailment", "neutral", "contradiction"]
    sentences = ["A man rides a horse.", "A woman reads.", "Two dogs run.", "It rains.",
                 "The sun is out.", "Nobody is here."]

    def rows(n, n_labels, offset):
        out = []
        for i in range(n):
            gold = labels[(i + offset) % 3]
            ann = [gold] + [rng.choice(labels) for _ in range(n_labels - 1)]
            out.append("\t".join([str(i), str(1000 + i), f"{1000 + i}e", "fiction", "( x )",
                                  "( y )", "(ROOT x)", "(ROOT y)", rng.choice(sentences),
                                  rng.choice(sentences)] + ann + [gold]))
        return out
    root.mkdir()
    train_cols = MNLI_COLUMNS + ["label1", "gold_label"]
    dev_cols = MNLI_COLUMNS + [f"label{i}" for i in range(1, 6)] + ["gold_label"]
    (root / "train.tsv").write_text("\n".join(["\t".join(train_cols)] + rows(n_train, 1, 0))
                                    + "\n")
    (root / "dev_matched.tsv").write_text("\n".join(["\t".join(dev_cols)] + rows(n_dev, 5, 1))
                                          + "\n")
    (root / "dev_mismatched.tsv").write_text(
        "\n".join(["\t".join(dev_cols)] + rows(n_dev + 2, 5, 2)) + "\n")
    (root / "test_matched.tsv").write_text("\t".join(MNLI_COLUMNS) + "\n")
    return root


def test_mnli_scores_matched_and_mismatched_in_one_run(tmp_path, tiny_model_dir):
    from clippo.eval.nlu import evaluate_nlu
    folder = _mnli_folder(tmp_path / "MNLI")
    out = tmp_path / "nlu.json"
    assert eval_main(["nlu", "--model", str(tiny_model_dir), "--task", "mnli", "--data",
                      str(folder), "--epochs", "3", "--quiet", "--device", "cpu", "--out",
                      str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert sorted(metrics) == ["mnli_m", "mnli_mm"]
    assert metrics["mnli_m"]["num_test"] == 10 and metrics["mnli_mm"]["num_test"] == 12
    # each equals a run scoring that dev file alone (one seeded head, trained once)
    model = CLIPPO.from_pretrained(str(tiny_model_dir)).eval()
    train = D.read_glue_tsv(folder / "train.tsv", "mnli")
    for name, f in (("mnli_m", "dev_matched.tsv"), ("mnli_mm", "dev_mismatched.tsv")):
        alone = evaluate_nlu(model, D.GLUE_TASKS["mnli"], train,
                             D.read_glue_tsv(folder / f, "mnli"), epochs=3)
        assert metrics[name]["accuracy"] == pytest.approx(alone["accuracy"], abs=1e-12)
    # --test scores one file, under the task's name
    assert eval_main(["nlu", "--model", str(tiny_model_dir), "--task", "mnli", "--data",
                      str(folder), "--test", str(folder / "dev_mismatched.tsv"), "--epochs",
                      "3", "--quiet", "--device", "cpu", "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["metrics"]) == ["mnli"]
