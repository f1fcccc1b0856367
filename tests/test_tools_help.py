"""Every tool's ``--help``: each option explained, no empty default shown."""
import argparse
import contextlib
import io
from pathlib import Path

import pytest
from alfo_run import load_tool

TOOLS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / 'tools').glob('*.py'))
WITHOUT_OPTIONS = {'demo'}  # `make demo` takes none


def parsers(parser):
    """``parser`` and its sub-commands' parsers."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += parsers(sub)
    return found


def test_every_tool_but_the_demo_has_a_parser():
    assert {t for t in TOOLS if not hasattr(load_tool(t), 'build_parser')} == WITHOUT_OPTIONS


@pytest.mark.parametrize('tool', sorted(set(TOOLS) - WITHOUT_OPTIONS))
def test_every_option_has_help_and_no_empty_default(tool):
    for parser in parsers(load_tool(tool).build_parser()):
        for action in parser._actions:
            assert action.help, f'{tool} {parser.prog}: {action.dest} has no help'
        text = parser.format_help()
        for empty in ('(default: )', '(default: None)', '(default: [])', '(default: False)'):
            assert empty not in text, f'{parser.prog}: {empty}'


def test_a_default_worth_saying_is_said():
    text = load_tool('predict').build_parser().format_help()
    assert '(default: 64)' in text  # --batch-size
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
        load_tool('search').main(['query', '--help'])
    assert '(default: 20)' in out.getvalue()  # --top
