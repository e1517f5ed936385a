"""Argument types the commands share: numbers checked at parse time, so that a bad value is a
usage error naming the option (exit 2), not a traceback later."""
import argparse


def _checked(convert, ok, message):
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(message.format(text=repr(text)))
        return value
    return parse


offset = _checked(int, lambda v: v >= 0, "not an offset: {text} (a whole number, 0 or more)")
positive_int = _checked(int, lambda v: v >= 1, "must be a whole number of 1 or more, not {text}")
record_count = _checked(int, lambda v: v >= 0, "must be a whole number of records, 0 or more, not {text}")
percent = _checked(float, lambda v: 0 <= v <= 100, "must be a percentage from 0 to 100, not {text}")
seconds = _checked(float, lambda v: 0 < v < float("inf"), "must be a number of seconds above 0, not {text}")
non_negative_seconds = _checked(float, lambda v: 0 <= v < float("inf"),
                                "must be a number of seconds, 0 or more, not {text}")
