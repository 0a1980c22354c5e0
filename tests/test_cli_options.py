"""One option vocabulary across the commands (issue 10): the same spelling for the same concept
everywhere, and the retired spellings still accepted for one release with one note on stderr."""
from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from maskkit.cli import main

#: concept -> the exact declarations every command that has it must use
SPELLINGS = {"quiet": ["-q", "--quiet"], "jobs": ["-j", "--jobs"], "out": ["-o", "--out"],
             "overwrite": ["--overwrite"], "aligned": ["--aligned"], "device": ["--device"],
             "detector": ["--detector"]}


def _visible(cmd: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in cmd.params if isinstance(p, click.Option) and not p.hidden}


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_speaks_one_vocabulary(name):
    cmd = main.commands[name]
    opts = _visible(cmd)
    assert "quiet" in opts, f"{name} lacks -q/--quiet"
    for concept, decls in SPELLINGS.items():
        if concept in opts:
            assert opts[concept].opts + opts[concept].secondary_opts == decls, (name, concept, opts[concept].opts)
    if "device" in opts:
        assert opts["device"].default == "auto", name
    if "jobs" in opts:
        assert opts["jobs"].default == 0, name  # 0 = all cores, demo included
        # -1 (joblib's "all") means 0 everywhere: synth took it, align and mask refused it
        assert (opts["jobs"].type.min, opts["jobs"].type.max) == (-1, None), name
    # no other spelling of an output or of progress is visible
    flat = {o for p in cmd.params if not getattr(p, "hidden", False) for o in p.opts + p.secondary_opts}
    assert not flat & {"--onnx", "--no-progress", "--progress"}, name


def test_commands_that_can_honour_them_have_them():
    have = {n: set(_visible(c)) for n, c in main.commands.items()}
    for n in ("align", "mask", "synth", "demo"):
        assert "jobs" in have[n], n
    assert len({_visible(main.commands[n])["jobs"].help for n in ("align", "mask", "synth", "demo")}) == 1
    for n in ("align", "mask", "synth"):  # mask's too_large line said "raise --max-pixels": it had none
        assert {"upsample", "max_side", "max_pixels"} <= have[n], n
    for n in ("align", "mask", "synth", "preview"):
        assert {"aligned", "detector"} <= have[n], n
    for n in ("align", "mask", "synth", "eval", "demo"):
        assert "overwrite" in have[n], n
    for n in ("train", "eval", "embed"):
        assert "device" in have[n], n
    for n in ("eval", "embed", "demo"):
        assert "detector" in have[n], n
    for n in ("align", "mask", "synth", "train", "eval", "embed", "export", "export-rec", "preview", "demo"):
        assert "out" in have[n], n


def test_detector_tuning_is_refused_where_it_does_nothing_and_max_pixels_is_honoured(astronaut, tmp_path):
    """--upsample / --max-side given to a detector without them is a usage error in every command
    (synth ignored --upsample for blazeface); mask's --max-pixels refuses a larger image."""
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(astronaut).save(src / "astronaut.png")
    for cmd in ("align", "mask", "synth"):
        for opt in (["--upsample", "1"], ["--max-side", "500"]):
            res = CliRunner().invoke(main, [cmd, "--src", str(src), "--out", str(tmp_path / cmd), "--detector",
                                            "blazeface", *opt])
            assert res.exit_code == 2 and f"{opt[0]} applies to hog and cnn only" in res.output, (cmd, res.output)
    res = CliRunner().invoke(main, ["mask", "--src", str(src), "--out", str(tmp_path / "m"), "--max-pixels", "1000",
                                    "-q"])
    assert res.exit_code == 1, res.output
    fails = [json.loads(x) for x in (tmp_path / "m" / "failures.jsonl").read_text().splitlines()]
    assert [f["reason"] for f in fails] == ["too_large"]

@pytest.mark.parametrize("args,old", [
    (["train", "--no-progress"], "--no-progress"),
    (["eval", "--no-progress"], "--progress/--no-progress"),
    (["embed", "--progress"], "--progress/--no-progress"),
    (["export", "--onnx", "{tmp}/m.onnx"], "--onnx"),
])
def test_old_spellings_still_parse_with_one_note(tmp_path, args, old):
    """The old spelling parses (the command goes on to its own check of --model / --data) and
    says once, on stderr, which spelling replaces it."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    cmd = args[:1] + ["--model", str(tmp_path)] * (args[0] != "train") + args[1:]
    if args[0] == "embed":
        cmd += ["--src", str(tmp_path), "-o", str(tmp_path / "e.npz")]
    res = CliRunner().invoke(main, cmd)
    assert "No such option" not in res.output, res.output
    assert res.stderr.count("is deprecated") == 1 and old in res.stderr, res.stderr
    assert res.exit_code in (1, 2) and "Traceback" not in res.output  # stopped by the command's own check


def test_deprecated_alias_converts_and_refuses_both():
    """The alias helper: the old value (converted) reaches the new parameter; both at once is a usage error."""
    from maskkit.cli.options import _deprecated, _quiet

    @click.command()
    @_quiet()
    @_deprecated("--progress/--no-progress", dest="quiet", new="-q/--quiet", convert=lambda p: not p, default=None)
    def cmd(quiet):
        click.echo(f"quiet={quiet}")

    r = CliRunner()
    assert r.invoke(cmd, []).stdout == "quiet=False\n"
    assert r.invoke(cmd, ["-q"]).stdout == "quiet=True\n"
    res = r.invoke(cmd, ["--no-progress"])
    assert res.stdout == "quiet=True\n" and res.stderr.count("deprecated") == 1
    assert r.invoke(cmd, ["--progress"]).stdout == "quiet=False\n"
    res = r.invoke(cmd, ["--no-progress", "-q"])
    assert res.exit_code == 2 and "both given" in res.output


def test_help_documents_the_embed_archive_and_the_onnx_inputs():
    """`embed --help` says mu is L2-normalised and the magnitude is stored apart; `export --help`
    gives the dtype of the ONNX `masked` input (a bool array fed as is is refused by onnxruntime)."""
    embed = " ".join(CliRunner().invoke(main, ["embed", "--help"]).stdout.split())
    assert "L2-normalised" in embed and "the norm of mu before normalisation, stored apart" in embed
    export = " ".join(CliRunner().invoke(main, ["export", "--help"]).stdout.split())
    assert "masked float32 (N,)" in export and "1.0 = masked-face branch" in export


#: Options whose absence means "not given" (an input or a file to read), not a value with a default.
_INPUTS = {("eval", "model"), ("eval", "bin_path"), ("eval", "pairs"), ("eval", "root"), ("eval", "gallery"),
           ("eval", "probes"), ("train", "data"), ("train", "init"), ("train", "config_path"), ("train", "sets"),
           ("export", "out"), ("export-rec", "out")}


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_option_shows_its_default(name):
    """Issue 20: `align --help` showed no default for --max-side (synth showed 640). Every visible
    option that takes a value is required, shows its default in --help (a value, or a phrase such as
    "(hog 1024, cnn 800)" when the default depends on another option), says it in its help, or is
    an input whose absence means "none"."""
    cmd = main.commands[name]
    gaps = []
    for p in _visible(cmd).values():
        if p.required or (p.is_flag and not p.secondary_opts) or (name, p.name) in _INPUTS:
            continue
        shown = isinstance(p.show_default, str) or (p.show_default and p.default is not None)
        if not shown and "default" not in (p.help or "").lower():
            gaps.append(p.opts[-1])
    assert not gaps, f"{name}: no default shown for {gaps}"


@pytest.mark.parametrize("cmd", ["align", "mask", "synth"])
def test_detector_defaults_shown_are_the_detectors_own(cmd):
    """The --upsample / --max-side defaults that --help shows are the values the detectors use when
    the option is not given (read from them, so a change to a detector changes the help)."""
    from maskkit.face.detect import get_detector

    text = " ".join(CliRunner().invoke(main, [cmd, "--help"]).stdout.split())
    hog, cnn = get_detector("hog"), get_detector("cnn")
    assert f"[default: ({hog.upsample});" in text.split("--upsample", 1)[1], text
    if cmd in ("align", "mask"):  # synth passes its own 640
        assert f"[default: (hog {hog.max_side}, cnn {cnn.max_side});" in text.split("--max-side", 1)[1]
    else:
        assert "[default: (640 for hog/cnn);" in text.split("--max-side", 1)[1]


def test_an_output_named_for_another_format_is_a_usage_error(tmp_path):
    """A file output is written in one format; a name ending otherwise (preview -o x.jpg wrote
    PNG bytes under .jpg) is a usage error naming the ending, and nothing is written."""
    from click.testing import CliRunner

    (tmp_path / "src").mkdir()
    cases = (
        (["preview", str(tmp_path / "src"), "-o", str(tmp_path / "sheet.jpg")], ".png"),
        (["synth", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "s"), "--preview",
          str(tmp_path / "p.jpeg")], ".png"),
        (["embed", "--model", str(tmp_path), "--src", str(tmp_path / "src"), "-o", str(tmp_path / "e.txt")], ".npz"),
    )
    for args, ending in cases:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and f"does not end in {ending}" in res.output, (args, res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
