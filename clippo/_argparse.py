"""The --help format shared by every `clippo` subcommand."""
import argparse

__all__ = ["HelpFormatter", "use_help_formatter"]


def _shown(value):
    """A default as --help shows it: strings holding a tab, newline or blank as repr ('\\t')."""
    if isinstance(value, str) and (not value.isprintable() or value != value.strip()
                                   or value == ""):
        return repr(value)
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" to an option's help once: not when the help already says what the
    default is, and not for defaults that mean "unset" (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or "%(default)" in text or default is None or default is False
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        shown = _shown(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def use_help_formatter(parser):
    """HelpFormatter for `parser` and every subcommand parser under it."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_help_formatter(sub)
    return parser
