"""The interfaces people already use: CLIP_benchmark's own zero-shot functions through
clippo.open_clip_interface give `clippo eval zeroshot`'s top-1; model.encode in the
sentence-transformers style."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import clippo
from clippo.eval import builtin as BI
from clippo.eval.main import main as eval_main
from clippo.eval.templates import canonical_class_names, canonical_templates, load_templates
from clippo.model.clippo import CLIPPO


@pytest.fixture(scope="module")
def model_dir(demo_model_dir):
    return demo_model_dir


def _image_folder(root, n=64):
    """The built-in zero-shot images as PNG files in an ImageFolder tree, and the classes'
    prompts as a JSON file {class name: [prompts]}."""
    ds, classes, prompts = BI.zeroshot_task(64, num_samples=n, part="heldout")
    for i in range(len(ds)):
        img, label, _ = ds[i]
        d = root / classes[label].replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:04d}.png")
    prompts_file = root.parent / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    return root, prompts


class _FolderDataset(torch.utils.data.Dataset):
    """ImageFolder as torchvision's: (preprocess(PIL image), class index), sorted classes."""

    def __init__(self, root, transform):
        self.classes = sorted(p.name for p in root.iterdir())
        self.items = [(f, c) for c, name in enumerate(self.classes)
                      for f in sorted((root / name).iterdir())]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), label


@pytest.mark.parametrize("prompting", ["class prompts", "templates"])
def test_clip_benchmark_zero_shot_matches_clippo_eval(model_dir, tmp_path, prompting):
    from clip_benchmark.metrics.zeroshot_classification import (run_classification,
                                                                zero_shot_classifier)
    from sklearn.metrics import balanced_accuracy_score
    root, prompts = _image_folder(tmp_path / "data")
    out = tmp_path / "res.json"
    flags = (["--templates", str(tmp_path / "prompts.json"), "--no-canonicalize"]
             if prompting == "class prompts" else ["--templates", "short"])
    assert eval_main(["zeroshot", "--model", str(model_dir), "--data", str(root), "--out",
                      str(out), "--quiet", "--device", "cpu"] + flags) == 0
    ours = json.loads(out.read_text())["metrics"]

    model = CLIPPO.from_pretrained(str(model_dir)).eval()
    wrapped, preprocess, tokenizer = clippo.open_clip_interface(model)
    ds = _FolderDataset(root, preprocess)
    names = [c.replace("_", " ") for c in ds.classes]
    if prompting == "templates":  # the reference's canonical prompts, in "{c}" syntax
        prompts = [t.replace("{}", "{c}") for t in canonical_templates(load_templates("short"))]
        names = canonical_class_names(names)
    # else: the same per-class prompts, CLIP_benchmark's dict form
    classifier = zero_shot_classifier(wrapped, tokenizer, names, prompts, "cpu", amp=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    logits, target = run_classification(wrapped, classifier, loader, "cpu", amp=False)
    acc1 = (logits.argmax(1) == target).float().mean().item()
    assert ours["acc1"] == pytest.approx(acc1, abs=1e-9)
    assert ours["mean_per_class_recall"] == pytest.approx(
        balanced_accuracy_score(target.numpy(), logits.argmax(1).numpy()))
    if prompting == "class prompts":  # a trained model: not a comparison of two chances
        assert acc1 > 3 / len(names)


def test_open_clip_interface_pieces():
    torch.manual_seed(0)
    model = CLIPPO(None, image_size=32, patch_size=16, width=32, depth=1, num_heads=2,
                   mlp_dim=64, out_dim=16).eval()
    wrapped, preprocess, tokenizer = clippo.open_clip_interface(model)
    x = preprocess(Image.new("RGB", (50, 20), (255, 0, 0)))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(32, 32)) and torch.allclose(x[1], -torch.ones(32, 32))
    t = tokenizer(["a red square", "x"])
    assert t.dtype == torch.uint8 and t.shape == (2, 3, 32, 32)
    assert torch.equal(t, model.renderer()(["a red square", "x"]))
    with torch.no_grad():
        torch.testing.assert_close(wrapped.encode_text(t), model.encode_text(["a red square",
                                                                             "x"]))
        zimg, ztxt, scale = wrapped(x[None], t)
    assert zimg.shape == (1, 16) and ztxt.shape == (2, 16)
    assert scale.item() == pytest.approx(model.temperature.item())
    assert tokenizer("one").shape == (1, 3, 32, 32)
    f = clippo.open_clip_interface(model, text_dtype=torch.float32)[2](["x"])
    assert f.dtype == torch.float32 and f.min() >= -1 and f.max() <= 1


def test_encode_sentence_transformers_style():
    torch.manual_seed(0)
    model = CLIPPO(None, image_size=32, patch_size=16, width=32, depth=1, num_heads=2,
                   mlp_dim=64, out_dim=16).eval()
    sentences = [f"sentence number {i}" for i in range(7)]
    z = model.encode(sentences, batch_size=3)
    assert isinstance(z, np.ndarray) and z.shape == (7, 16) and z.dtype == np.float32
    with torch.no_grad():
        ref = model.encode_text(sentences).numpy()
    np.testing.assert_allclose(z, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    one = model.encode("sentence number 0")
    assert one.shape == (16,)
    np.testing.assert_allclose(one, z[0], atol=1e-5)
    t = model.encode(sentences[:2], convert_to_numpy=False)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 16)
    raw = model.encode(sentences[:2], normalize_embeddings=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert model.encode([]).shape == (0, 16)
