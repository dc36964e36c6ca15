"""Argument types shared by the generating commands (``loop``, ``demo``, ``eval``): each parses one
value and refuses a bad one with an argparse message that says what range it needs."""

from __future__ import annotations

import argparse
import math

from ..engines.emotion_space import EmotionValueError, check_component

SEED_LIMIT = 2**64  # ComfyUI's seed range; the loop's candidate seeds wrap at the same modulus


def va_component(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [-3, 3], got {text!r}") from None
        try:
            return check_component(value, name)
        except EmotionValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse



def positive_int(name: str, maximum: int = 1000):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{name} must be in 1..{maximum}, got {value}")
        return value

    return parse



def finite_number(name: str, lo: float, hi: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [{lo:g}, {hi:g}], got {text!r}") from None
        if not (math.isfinite(value) and lo <= value <= hi):  # NaN would reach report.json as invalid JSON
            raise argparse.ArgumentTypeError(f"{name} must be a finite number in [{lo:g}, {hi:g}], got {text!r}")
        return value

    return parse



def seed_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be a whole number, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"seed must be in 0..{SEED_LIMIT - 1} (2**64-1), got {value}")
    return value



def image_size(text: str) -> int:
    value = positive_int("size", 4096)(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"size must be a multiple of 8, got {value}")
    return value


