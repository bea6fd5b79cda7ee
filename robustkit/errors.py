"""User-facing errors.

Anything a user can cause (an unknown name, a bad parameter, a corrupt file) raises
:class:`RobustkitError` with one line that says what is wrong and what to do. The CLI prints it
without a traceback and exits with code 2; programming errors still show their traceback.
"""


def one_line(err: BaseException, *, typed: bool = False) -> str:
    """An exception as one line for a user-facing message: the first line of its text (``Type: text`` when
    ``typed``; the type alone when there is no text), at most 300 characters."""
    lines = str(err).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    if typed or not text:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class RobustkitError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class UnknownNameError(RobustkitError, KeyError):
    """A name that no registry knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ParameterError(RobustkitError, ValueError):
    """An unknown, mistyped or out-of-range parameter."""


class InputError(RobustkitError, ValueError):
    """Images or labels of the wrong shape, range or dtype."""


class PluginError(RobustkitError):
    """A plugin that breaks the contract in a way that cannot be skipped."""


class PluginBug(RuntimeError):
    """A plugin's component failed in a way it did not explain: a bug in the plugin. Deliberately not a
    :class:`RobustkitError`, so its traceback is shown (it names the plugin first)."""
