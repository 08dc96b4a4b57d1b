"""Every subcommand's --help: each default shown once (never "(default: None)"), shown as the
value is (a tab as '\\t'), and --output / --out naming the output everywhere."""
import re

import pytest

from clippo import cli

SUBCOMMANDS = [["render"], ["demo"], ["bench"], ["train"], ["convert"], ["eval"]] + \
    [["eval", task] for task in ("zeroshot", "retrieval", "multilingual", "nlu", "vqa",
                                  "fewshot", "all")]
WITH_OUTPUT = ("render", "demo", "bench", "train", "eval ")


def _help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _options(text):
    """{first option string: its help text, joined over lines}."""
    options, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-{1,2}[\w-]+)", line)
        if m:
            current = m.group(1)
            options[current] = line
        elif current and line.startswith("    "):
            options[current] += " " + line.strip()
        else:
            current = None
    return options


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=" ".join)
def test_help_shows_each_default_once(capsys, argv):
    text = _help(capsys, list(argv))
    options = _options(text)
    assert options
    for flag, entry in options.items():
        entry = re.sub(r"\s+", " ", entry)
        assert "(default: None)" not in entry and "(default: False)" not in entry, entry
        appended = re.search(r"\(default: [^()]*\)$", entry.strip())
        if appended:  # the generic "(default: X)" only where the help says nothing of it
            assert "default" not in entry.strip()[:appended.start()], entry
        assert "(default: )" not in entry, entry
    if " ".join(argv).startswith(WITH_OUTPUT):
        assert re.search(r"--output \w+, --out \w+", text), text


def test_a_tab_default_shows_as_backslash_t():
    import argparse

    from clippo._argparse import HelpFormatter
    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    p.add_argument("--sep", default="\t", help="field separator")
    p.add_argument("--empty", default="", help="a blank value")
    text = re.sub(r"\s+", " ", p.format_help())
    assert "field separator (default: '\\t')" in text
    assert "a blank value (default: '')" in text


def test_train_help_shows_its_defaults(capsys):
    options = _options(_help(capsys, ["train"]))
    assert "(default: 64)" in options["--batch-size"]
    assert options["--csv-separator"].count("default") == 1


@pytest.mark.parametrize("argv, dest, expected", [
    (["render", "x", "--out", "a.png"], "output", "a.png"),
    (["demo", "--output", "d"], "out", "d"),
    (["bench", "--output", "b"], "out", "b"),
])
def test_output_and_out_are_one_flag(monkeypatch, argv, dest, expected):
    seen = {}
    for name in ("cmd_render", "cmd_demo", "cmd_bench"):
        monkeypatch.setattr(cli, name, lambda args: seen.update(vars(args)) or 0)
    assert cli.main(argv) == 0
    assert seen[dest] == expected


def test_train_and_eval_take_both_names():
    from clippo.eval.main import build_parser
    from clippo.train.params import parse_args
    assert parse_args(["--train-data", "builtin", "--out", "x"]).output == "x"
    assert build_parser().parse_args(["zeroshot", "--model", "m", "--data", "d",
                                      "--output", "r.json"]).out == "r.json"
