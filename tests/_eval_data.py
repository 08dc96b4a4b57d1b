"""Evaluation data written from the built-in scenes, and `clippo eval`'s numbers under the names
`clippo train` writes them (tests of the in-training evaluation)."""
import json
from pathlib import Path


def write_eval_data(root, num_val=70, num_zeroshot=48):
    """val.csv (tab-separated; one or two captions per image, one undecodable image) and an
    ImageFolder of 4 classes, from the built-in evaluation scenes. Returns (csv, folder)."""
    from PIL import Image

    from clippo.eval import builtin as BI
    root = Path(root)
    task = BI.retrieval_task(32)
    lines = ["filepath\ttitle"]
    (root / "val").mkdir(parents=True, exist_ok=True)
    for i in range(num_val):
        Image.fromarray(task["images"][i].permute(1, 2, 0).numpy()).save(root / "val" / f"{i}.png")
        lines += [f"val/{i}.png\t{c}" for c in task["captions"][i][:1 + i % 2]]
    (root / "val" / "broken.png").write_bytes(b"not an image")
    lines.append("val/broken.png\ta broken file")
    (root / "val.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds, names, _ = BI.zeroshot_task(32, num_samples=num_zeroshot)
    for i in range(num_zeroshot):
        image, target, _ = ds[i]
        if target < 4:
            folder = root / "zeroshot" / names[target].replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root / "val.csv", root / "zeroshot"


def clippo_eval(model_dir, val_csv, zeroshot_dir, out):
    """`clippo eval retrieval` and `clippo eval zeroshot` on a model: their metrics, renamed as
    the trainer writes them."""
    from clippo.eval.main import main as eval_main
    assert eval_main(["retrieval", "--model", str(model_dir), "--data", str(val_csv),
                      "--csv-separator", "\t", "--quiet", "--out", str(out / "r.json")]) == 0
    r = json.loads((out / "r.json").read_text())["metrics"]
    want = {f"val/{k}": v for k, v in r.items() if "recall@" in k}
    if zeroshot_dir is not None:
        assert eval_main(["zeroshot", "--model", str(model_dir), "--data", str(zeroshot_dir),
                          "--templates", "short", "--quiet", "--out", str(out / "z.json")]) == 0
        z = json.loads((out / "z.json").read_text())["metrics"]
        want.update({f"zeroshot/{k}": z[k] for k in ("acc1", "acc5", "mean_per_class_recall")})
    return want
