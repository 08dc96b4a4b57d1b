"""The `clippo` command.

    clippo render "some text" -o out.png          see what the model sees
    clippo render --file lines.txt -o grid.png    one image per line, in a grid
    clippo convert in.npz out_dir                 big_vision checkpoint -> save_pretrained
    clippo demo                                   train a small CLIPPO on built-in data, evaluate it
    clippo bench                                  rendering and encoding speed on this machine
    clippo train --train-data builtin ...         train CLIPPO (clippo train -h)
    clippo eval zeroshot --model DIR --data ...   evaluate (clippo eval -h)
"""
import argparse
import sys
from pathlib import Path

from clippo._argparse import use_help_formatter


def _render_args(p):
    g = p.add_argument_group("rendering (defaults: the reference's)")
    g.add_argument("--font", help="Unifont .hex(.gz) or TTF/OTF: a path, an installed font's "
                   "file name (DejaVuSans.ttf) or family (\"DejaVu Sans\"); default: GNU Unifont")
    g.add_argument("--upper-font", help="Unifont .hex for planes 1-16 (with a .hex --font)")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--font-size", type=int, default=16)
    g.add_argument("--max-chars", type=int, default=768)
    g.add_argument("--no-lower", action="store_true", help="keep ASCII upper case")
    g.add_argument("--monospace", action="store_true")
    g.add_argument("--word-wrap", action="store_true", help="break rows between words (not "
                   "the reference's character wrap)")
    g.add_argument("--antialias", action="store_true", help="anti-aliased TTF/OTF glyphs")


def _renderer(args, device="cpu"):
    from clippo.text import TextRenderer
    return TextRenderer(font=args.font, upper_font=args.upper_font, image_size=args.image_size,
                        font_size=args.font_size, max_chars=args.max_chars,
                        lower=not args.no_lower, monospace=args.monospace,
                        word_wrap=args.word_wrap,
                        antialias=args.antialias, device=device)


def cmd_render(args):
    from clippo.figures import grid
    from clippo.text.png import image_format, save_image
    from clippo.text.system_fonts import find_font
    texts = list(args.text)
    if args.file:
        with open(args.file, encoding="utf-8", errors="replace") as f:
            texts += [line.rstrip("\n") for line in f]
    if not texts:
        print("clippo render: give some text or --file", file=sys.stderr)
        return 2
    try:
        image_format(args.output)  # an unwritable format fails before the work, not after
    except ImportError as e:  # Pillow missing for a format other than PNG
        print(f"clippo render: error: {e}", file=sys.stderr)
        return 1
    if args.font is not None:
        font, looked_up = find_font(args.font)
        if looked_up:
            print(f"using font: {font}", file=sys.stderr)
        args.font = str(font)
    images = _renderer(args)(texts)[:, 0].numpy()
    save_image(args.output, images[0] if len(texts) == 1 else grid(images, args.columns))
    print(f"wrote {args.output}: {len(texts)} text image(s) of {args.image_size}x{args.image_size}")
    return 0


def convert_main(argv=None):
    """`clippo convert in.npz out_dir`: big_vision checkpoint -> save_pretrained directory."""
    from clippo import convert
    from clippo.model.clippo import CLIPPO

    parser = argparse.ArgumentParser(
        prog="clippo convert",
        description="Convert a big_vision CLIPPO .npz checkpoint to safetensors + config.json.")
    parser.add_argument("input", help="big_vision .npz checkpoint")
    parser.add_argument("output", help="directory to write model.safetensors and config.json to")
    args = parser.parse_args(argv)
    try:
        model = CLIPPO.from_big_vision(args.input)
    except (OSError, KeyError, ValueError) as e:
        print(f"clippo convert: error: {e}", file=sys.stderr)
        return 1
    print("inferred config:")
    for k, v in model.config.items():
        if k != "render":
            print(f"  {k}: {v}")
    print(f"parameters: {model.num_params():,}")
    model.save_pretrained(args.output)
    out = Path(args.output)
    print(f"wrote {out / convert.WEIGHTS_NAME} and {out / convert.CONFIG_NAME}")
    return 0


def cmd_convert(args, rest):
    return convert_main(rest)


def cmd_train(args, rest):
    from clippo import train
    return train.main(rest)


def cmd_eval(args, rest):
    from clippo.eval.main import main as eval_main
    return eval_main(rest)


def cmd_demo(args):
    from clippo import demo
    return demo.main(args)


def cmd_bench(args):
    from clippo import bench
    return bench.main(args)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="clippo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render text to an image file (one image, or a grid)")
    p.add_argument("text", nargs="*", help="strings to render, one image each")
    p.add_argument("-f", "--file", help="a UTF-8 text file: one image per line")
    p.add_argument("-o", "--output", "--out", default="clippo-render.png",
                   help="image file; its suffix picks the format: .png, or .jpg, .bmp, .tif, "
                   ".webp, ... (with Pillow)")
    p.add_argument("--columns", type=int, help="grid columns (default: about square)")
    _render_args(p)

    sub.add_parser("convert", help="convert a big_vision .npz checkpoint (clippo convert -h)",
                   add_help=False)

    sub.add_parser("eval", help="evaluation suite: zeroshot, retrieval, multilingual, nlu, "
                   "vqa, fewshot, all (clippo eval -h)", add_help=False)

    sub.add_parser("train", help="train CLIPPO (clippo train -h)", add_help=False)

    p = sub.add_parser("demo", help="train a small CLIPPO on built-in data and evaluate it")
    p.add_argument("--output", "--out", dest="out", default="clippo-demo",
                   help="folder for the report, PNGs, model (an earlier demo's run there is "
                   "replaced)")
    p.add_argument("--steps", type=int, help="training steps of both stages together (default: "
                   "the demo's recipe, 1500), split between them in the recipe's proportion")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (image drawing)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--text-tokens", choices=("all", "ink"), default="all",
                   help="train the demo's model with every patch of a rendered text (all, the "
                        "reference) or only those holding ink (clippo train --text-tokens)")
    p.add_argument("--seed", type=int, default=None,
                   help="training seed (default: the recipe's, 0); the held-out figures of "
                        "several seeds show how much of a difference is noise")

    p = sub.add_parser("bench", help="rendering and encoding speed on this machine")
    p.add_argument("--output", "--out", dest="out", default="clippo-bench",
                   help="folder for the PNG and JSON")
    p.add_argument("--variant", default="Ti/16", help="model size for the encode timing")
    p.add_argument("--checkpoint", help="a big_vision .npz to encode with (default: random)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--quick", action="store_true", help="smaller batches (smoke test)")

    use_help_formatter(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "convert":
            return cmd_convert(args, rest)
        if args.command == "eval":
            return cmd_eval(args, rest)
        if args.command == "train":
            return cmd_train(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return {"render": cmd_render, "demo": cmd_demo, "bench": cmd_bench}[args.command](args)
    except (ValueError, OSError, TypeError) as e:  # user errors: one line, no traceback
        print(f"clippo {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
