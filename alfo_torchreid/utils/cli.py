"""The tools' ``--help``: the docstring as written, and each option's default
said only where there is one to say."""
import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with the description and epilog kept as written, and
    ``(default: X)`` after an option's help unless ``X`` is empty (``''``,
    None, ``[]``, False: nothing to show) or the help already says its default."""

    def _get_help_string(self, action):
        text = action.help or ''
        empty = action.default is None or action.default is False or action.default in ('', [])
        if empty or 'default' in text:
            return text
        return super()._get_help_string(action)
