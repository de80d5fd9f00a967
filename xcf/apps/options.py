"""The argparse types of the command line: each parses one option's text or says in one line what it needs."""

from __future__ import annotations

import argparse
import os

from xcf.apps.fitting import FITTABLE, check_fit
from xcf.apps.methods import check_methods

__all__ = ["fit_list", "folder", "int_at_least", "methods", "number", "positive_float", "probability", "spell",
           "unspell"]


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def number(ok, requirement: str):
    """An argparse type: a float for which ``ok(value)`` holds, else ``must <requirement>``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must {requirement}, got {text}")
        return value

    parse.__name__ = f"number that must {requirement}"
    return parse


positive_float = number(lambda v: v > 0, "be > 0")
probability = number(lambda v: 0.0 < v < 1.0, "lie strictly between 0 and 1")


def fit_list(text: str) -> list[str]:
    if not text.strip(", "):
        raise argparse.ArgumentTypeError(f"--fit takes a comma-separated subset of {list(FITTABLE)}, got {text!r}")
    try:
        return check_fit(text.split(","), None, None)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def folder(text: str) -> str:
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return text


def methods(text: str) -> list[str]:
    try:
        return check_methods(text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def spell(output: str) -> str:
    return output.replace("_", "-")  # log_probs in Python, log-probs on the command line


def unspell(output: str) -> str:
    return output.replace("-", "_")
