"""Zero-shot classification and retrieval against step-by-step recomputations (one prompt,
one image at a time, float64), the CLI's JSON and skip accounting, on a small random model."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.eval import builtin as BI
from clippo.eval.main import main as eval_main
from clippo.eval.retrieval import CaptionedImages, evaluate_retrieval
from clippo.eval.zeroshot import class_prompts, evaluate_zeroshot, zero_shot_classifier
from clippo.model.clippo import CLIPPO


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CLIPPO(None, image_size=32, patch_size=16, width=32, depth=1, num_heads=2,
                  mlp_dim=64, out_dim=16).eval()


def _norm(z):
    return z / z.norm(dim=-1, keepdim=True)


def test_class_prompts_canonicalise_as_reference():
    prompts = class_prompts(["Great_White shark", "cat"], ["a photo of a {}.", "{}"])
    assert prompts == [["a photo of a great white shark", "great white shark"],
                       ["a photo of a cat", "cat"]]


def test_zero_shot_classifier_matches_one_prompt_at_a_time(tiny):
    names, templates = ["red circle", "blue star", "green ring"], ["a {}", "itap of a {}", "{}"]
    w = zero_shot_classifier(tiny, names, templates, batch_size=4)
    with torch.no_grad():
        ref = torch.stack([_norm(torch.stack([_norm(tiny.encode_text([t.format(n)])[0].double())
                                              for t in templates]).mean(0)) for n in names], 1)
    assert w.shape == (16, 3)
    torch.testing.assert_close(w.double(), ref, atol=1e-5, rtol=1e-5)
    # per-class prompts (CLIP_benchmark's dict form), of different numbers per class
    prompts = {"a": ["a red circle", "a red star", "a red ring"], "b": ["a blue cross"]}
    w = zero_shot_classifier(tiny, ["b", "a"], prompts)
    with torch.no_grad():
        ref = torch.stack([_norm(torch.stack([_norm(tiny.encode_text([t])[0].double())
                                              for t in prompts[n]]).mean(0)) for n in "ba"], 1)
    torch.testing.assert_close(w.double(), ref, atol=1e-5, rtol=1e-5)


def test_evaluate_zeroshot_matches_manual_argmax(tiny):
    ds, names, templates = BI.zeroshot_task(32, num_samples=48)
    out = evaluate_zeroshot(tiny, ds, names, templates, batch_size=10)
    w = zero_shot_classifier(tiny, names, templates).double()
    with torch.no_grad():
        logits = torch.stack([tiny.encode_image(ds[i][0][None])[0].double() for i in
                              range(len(ds))]) @ w
    target = torch.tensor([ds[i][1] for i in range(len(ds))])
    assert out["num_samples"] == 48 and out["skipped"] == []
    assert out["acc1"] == pytest.approx((logits.argmax(1) == target).double().mean().item())
    # at 32 px a prompt shows its first words only, so classes of one colour tie exactly: a
    # tied class of lower index ranks first (ties="first"), which topk's order does not promise
    own = logits.gather(1, target[:, None])
    lower = torch.arange(logits.shape[1])[None] < target[:, None]
    rank = (logits > own).sum(1) + ((logits == own) & lower).sum(1)
    assert out["acc5"] == pytest.approx((rank < 5).double().mean().item())


def test_cached_classifier_renders_no_prompt_again(tiny, monkeypatch):
    import clippo.eval.zeroshot as Z
    ds, names, templates = BI.zeroshot_task(32, num_samples=16)
    w = zero_shot_classifier(tiny, names, templates)
    want = evaluate_zeroshot(tiny, ds, names, templates)

    def no_text(*a, **k):
        raise AssertionError("prompts encoded again")
    monkeypatch.setattr(Z, "encode_texts", no_text)
    got = evaluate_zeroshot(tiny, ds, names, classifier=w)
    assert got == want


def test_evaluate_retrieval_matches_brute_force(tiny):
    task = BI.retrieval_task(32)
    ds = CaptionedImages(zip(task["images"], task["captions"]), 32)
    out = evaluate_retrieval(tiny, ds, ks=(1, 5, 10), batch_size=20)
    with torch.no_grad():
        zimg = torch.stack([tiny.encode_image(ds[i][0][None])[0] for i in range(len(ds))])
        caps = [(c, i) for i in range(len(ds)) for c in ds[i][1]]
        ztxt = tiny.encode_text([c for c, _ in caps])
    s = (zimg.double() @ ztxt.double().t()).numpy()
    owner = np.array([i for _, i in caps])
    for k in (1, 5, 10):
        # text -> image: the image of the caption among the k best images
        t2i = np.mean([owner[j] in np.argsort(-s[:, j], kind="stable")[:k]
                       for j in range(s.shape[1])])
        # image -> text: any of the image's captions among the k best captions
        i2t = np.mean([(owner[np.argsort(-s[i], kind="stable")[:k]] == i).any()
                       for i in range(s.shape[0])])
        assert out[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
        assert out[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)
    assert out["num_images"] == 96 and out["num_texts"] == 192


def test_retrieval_leaves_out_undecodable_images_with_their_captions(tiny, tmp_path):
    paths = []
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), color).save(p)
        paths.append(p)
    paths[1].write_bytes(b"not a png")
    ds = CaptionedImages([(p, [f"caption {i}", f"other {i}"]) for i, p in enumerate(paths)],
                         32)
    out = evaluate_retrieval(tiny, ds, ks=(1,))
    assert out["skipped"] == [1] and out["num_images"] == 2 and out["num_texts"] == 4


def _save_tiny(tiny, tmp_path):
    d = tmp_path / "model"
    tiny.save_pretrained(str(d))
    return d


def test_cli_zeroshot_counts_broken_images(tiny, tmp_path):
    root = tmp_path / "data"
    for name, color in [("red_thing", (220, 20, 20)), ("blue_thing", (20, 20, 220))]:
        (root / name).mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (40, 40), color).save(root / name / f"{j}.png")
    (root / "red_thing" / "9.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "res.json"
    rc = eval_main(["zeroshot", "--model", str(_save_tiny(tiny, tmp_path)), "--data",
                    str(root), "--templates", "short", "--out", str(out), "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["task"] == "zeroshot_classification" and res["skipped"] == 1
    assert res["skipped_files"] == [str(root / "red_thing" / "9.png")]
    assert res["metrics"]["num_samples"] == 6 and res["num_classes"] == 2
    assert set(res["metrics"]) >= {"acc1", "acc5", "mean_per_class_recall"}
    assert res["metrics"]["acc5"] is None  # fewer than 5 classes: NaN, written as null


def test_cli_errors_are_one_line(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("filepath,label\na.png,cat\nb.png\n")
    rc = eval_main(["zeroshot", "--model", str(_save_tiny(tiny, tmp_path)), "--data",
                    str(bad), "--quiet", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 1 and f"{bad}:3:" in err and "Traceback" not in err
    rc = eval_main(["retrieval", "--model", str(tmp_path / "nothing"), "--data", "builtin"])
    assert rc == 1 and "no such model" in capsys.readouterr().err


def test_clippo_command_forwards_to_eval(tiny, tmp_path):
    from clippo.cli import main as clippo_main
    out = tmp_path / "r.json"
    rc = clippo_main(["eval", "retrieval", "--model", str(_save_tiny(tiny, tmp_path)),
                      "--data", "builtin", "--recall-k", "1", "5", "--quiet", "--out",
                      str(out), "--device", "cpu"])
    res = json.loads(out.read_text())
    assert rc == 0 and res["task"] == "zeroshot_retrieval"
    assert set(res["metrics"]) >= {"image_retrieval_recall@1", "text_retrieval_recall@5"}
    assert res["chance"]["image_retrieval_recall@1"] == pytest.approx(1 / 96)


def test_builtin_runners(tiny):
    """The built-in tasks as `clippo demo` calls them."""
    zs = BI.zeroshot(tiny, image_size=32, num_samples=32)
    assert zs["num_classes"] == 16 and zs["chance"]["acc1"] == pytest.approx(1 / 16)
    assert zs["metrics"]["num_samples"] == 32 and 0 <= zs["metrics"]["acc1"] <= 1
    task = BI.retrieval_task(image_size=32)
    assert task["images"].shape == (96, 3, 32, 32) and len(task["texts"]) == 96
    assert len(set(task["texts"])) == 96  # captions unique in the gallery
    ret = BI.retrieval(tiny, task=task)
    assert ret["num_images"] == 96 and ret["num_texts"] == 192
    assert set(ret["metrics"]) >= {"image_retrieval_recall@1", "text_retrieval_recall@5"}
    ml = BI.multilingual(tiny, image_size=32, ks=(1,))
    assert set(ml["metrics"]["per_language"]) == {"en", "de", "ru", "zh"}
