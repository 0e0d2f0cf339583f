"""The serve/predict command-line parsers accept TF Serving's flag syntax and defaults."""

import argparse

import pytest

from kfx.serving import cli


@pytest.fixture
def parser():
    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    return parser


def test_serve_defaults_are_tf_servings(parser):
    args = parser.parse_args(["serve"])
    assert (args.port, args.rest_api_port, args.model_name, args.file_system_poll_wait_seconds,
            args.enable_batching, args.enable_model_warmup, args.rest_api_timeout_in_ms,
            args.host) == (8500, 0, "default", 1, False, True, 30000, "127.0.0.1")
    assert args.func is cli.serve


@pytest.mark.parametrize("argv, expected", [
    (["--port=9000", "--enable_batching"], (9000, True, True)),
    (["--port", "9001", "--enable_batching=false", "--enable_model_warmup=false"], (9001, False, False)),
    (["--enable_batching=true", "--enable_model_warmup", "0"], (8500, True, False)),
])
def test_serve_flag_syntaxes(parser, argv, expected):
    args = parser.parse_args(["serve", *argv])
    assert (args.port, args.enable_batching, args.enable_model_warmup) == expected


def test_bad_boolean_is_rejected(parser):
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--enable_batching=maybe"])


def test_predict_parser(parser):
    args = parser.parse_args(["predict", "--server", "localhost:9", "--model", "m", "--label", "stable",
                              "--json", "{}"])
    assert (args.server, args.model, args.label, args.version, args.signature, args.func) == (
        "localhost:9", "m", "stable", None, "", cli.predict)
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--model", "m", "--version", "1", "--label", "x", "--json", "{}"])
