"""Durations as people write them: the runner's parser, which the broker's config shares."""

from service.runner.durations import MAX_SECONDS, parse_duration

__all__ = ["MAX_SECONDS", "parse_duration"]
