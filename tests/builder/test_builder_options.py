"""The builder's options are declared once: every field of a command's options dataclass is a flag of the
generated parser with the field's default, its rule refuses a bad value with the one-line error and exit code
2 before any work, and the written bundle is verified by the board's own loader."""

from __future__ import annotations

import dataclasses

import pytest

from autlearn_build.cli import build_parser, main
from autlearn_build.errors import BuildError, InputError
from autlearn_build.image_options import ImageOptions
from autlearn_build.options import specs
from autlearn_build.text_options import TextOptions

COMMANDS = [ImageOptions, TextOptions]


def _subparser(options):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "task")
    return action.choices[options.COMMAND]


@pytest.mark.parametrize("options", COMMANDS, ids=lambda c: c.COMMAND)
def test_every_field_is_a_flag_with_its_default(options):
    sub = _subparser(options)
    by_dest = {a.dest: a for a in sub._actions}
    for f, spec in specs(options):
        action = by_dest[f.name]
        assert action.option_strings == [spec.flag_of(f.name)], f.name
        assert action.help == spec.help
        if f.default is dataclasses.MISSING:
            assert action.required, f.name
        else:
            assert action.default == f.default and not action.required, f.name
        if spec.choices is not None:
            assert tuple(action.choices) == tuple(spec.choices), f.name
    # nothing on the command line that is not a field (beyond --help)
    assert {a.dest for a in sub._actions} - {"help"} == {f.name for f in dataclasses.fields(options)}
    text = sub.format_help()
    for f, spec in specs(options):
        assert spec.flag_of(f.name) in text


@pytest.mark.parametrize("options", COMMANDS, ids=lambda c: c.COMMAND)
def test_parsed_arguments_give_the_dataclass_defaults(options, tmp_path):
    args = build_parser().parse_args([options.COMMAND, "--data", "somewhere", "--out", str(tmp_path / "o")])
    assert args.options is options
    assert args.options.from_args(args) == options(data="somewhere", out=tmp_path / "o")


def test_head_epochs_default_depends_on_the_source_and_an_explicit_value_is_kept(tmp_path):
    parse = build_parser().parse_args
    base = ["image", "--data", "d", "--out", str(tmp_path / "o")]
    assert ImageOptions.from_args(parse(base)).head_epochs == 3
    assert ImageOptions.from_args(parse([*base, "--model", "m.keras"])).head_epochs == 30
    assert ImageOptions.from_args(parse([*base, "--model", "m.keras", "--head-epochs", "3"])).head_epochs == 3


BAD = [  # (options, field, a value its rule refuses)
    (ImageOptions, "width_mult", "9"), (ImageOptions, "class_capacity", "1"), (ImageOptions, "val_fraction", "0.9"),
    (ImageOptions, "degrade", "1.5"), (ImageOptions, "tail_lr_scale", "20"), (ImageOptions, "prune_max_rounds", "20000"),
    (ImageOptions, "limit", "3"), (ImageOptions, "learning_rate", "1"),
    (TextOptions, "seq_len", "1"), (TextOptions, "limit", "10"), (TextOptions, "synonym_threshold", "2"),
    (TextOptions, "max_unk", "0"), (TextOptions, "batch_size", "70000"),
]


@pytest.mark.parametrize("options,name,value", BAD, ids=[f"{o.COMMAND}-{n}" for o, n, _ in BAD])
def test_a_value_the_rule_refuses_is_one_line_exit_2_before_any_work(options, name, value, tmp_path, capsys):
    spec = dict((f.name, s) for f, s in specs(options))[name]
    flag = spec.flag_of(name)
    out = tmp_path / "out"
    rc = main([options.COMMAND, "--data", "mnist5k" if options is ImageOptions else "shakespeare",
               "--out", str(out), flag, value])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"autlearn-build: error: {flag} {spec.rule.must}"]
    assert not out.exists()


def test_a_value_the_parser_refuses_names_the_flag_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["text", "--data", "x", "--out", str(tmp_path / "o"), "--epochs", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("autlearn-build text: error: argument --epochs: must be at least 1: '0' "
                                       "(see --help)\n")


@pytest.mark.parametrize("tail, error", [
    ("below", "--tail 'below' is not a cut of the built-in CNN (known: head, last_block, last2_blocks)"),
    ("head,last_block,middle", "--tail 'middle' is not a cut of the built-in CNN"),
    ("head,last_conv", "--tail 'last_conv' is not a cut of the built-in CNN"),
    ("head,last_block,head", "--tail lists 'head' twice"),
    ("last_block,last2_blocks", "--tail last_block,last2_blocks: a list of cuts must include head"),
])
def test_a_bad_tail_or_list_of_tails_names_the_bad_cut_exit_2(tmp_path, capsys, tail, error):
    out = tmp_path / "o"
    assert main(["image", "--data", "mnist5k", "--out", str(out), "--tail", tail]) == 2
    assert capsys.readouterr().err.startswith(f"autlearn-build: error: {error}")
    assert not out.exists()


def test_a_list_of_tails_is_ordered_shallowest_first_for_the_cnn_and_a_backbone():
    assert ImageOptions(data="x", out="y", tail="last2_blocks, head,last_block").tails == \
        ("head", "last_block", "last2_blocks")
    assert ImageOptions(data="x", out="y", tail="last_block").tails == ("last_block",)
    assert ImageOptions(data="x", out="y", backbone="mobilenet_v2", tail="last_block,head,last_conv").tails == \
        ("head", "last_conv", "last_block")
    with pytest.raises(InputError, match="'last2_blocks' is not a cut of a --model/--backbone"):
        ImageOptions(data="x", out="y", backbone="mobilenet_v2", tail="head,last2_blocks").validate()


def test_validate_refuses_a_choice_given_in_code():
    with pytest.raises(InputError, match=r"--synonym-source 'rows' is not known \(known: input, output, both\)"):
        TextOptions(data="x", out="y", synonym_source="rows").validate()


def test_a_bundle_the_board_would_refuse_is_a_build_failure(tmp_path):
    from autlearn_build.build_steps import write_verified
    from autlearn_build.bundle_writer import Variant

    variant = Variant(name="full", base_model=b"base", head_model=b"head", head_weights=["w0"], feature_size=4,
                      params=1, flops=1, latency_ms=0.1, accuracy_int8=0.5, accuracy_float=0.5)
    opts = ImageOptions(data="d", out=tmp_path / "b")
    spec = {"width": 28, "height": 28, "color_mode": "L", "channels": 1, "scale": 1 / 255, "offset": 0.0,
            "fit_box": 40}  # a box larger than the frame: the board refuses it
    with pytest.raises(BuildError) as exc:
        write_verified(tmp_path / "b", opts, task="image_classification", input_spec=spec, labels=["a", "b"],
                       class_capacity=4, variants=[variant], build={})
    assert exc.value.exit_code == 1 and "fit_box" in exc.value.message
    manifest = write_verified(tmp_path / "c", opts, task="image_classification", input_spec={**spec, "fit_box": 20},
                              labels=["a", "b"], class_capacity=4, variants=[variant], build={})
    assert manifest["files"]["base_full_int8.tflite"]["bytes"] == 4
