"""Incremental detokenization with stop strings.

Text is produced token by token without re-decoding the whole output each step (two short
decodes of a sliding window, vLLM's prefix/read-offset scheme). A token that ends inside a
multi-byte UTF-8 character decodes to U+FFFD; its text is held back until the character is
complete. Stop strings are searched across token boundaries; the matched stop string is cut off
and not returned. While a stop string could still be forming at the end, that many characters
are withheld from streaming so a client never sees text that later turns out to be a stop.
"""

from __future__ import annotations

import logging
from typing import Sequence

from shared.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_CONTEXT = 5  # prompt tokens decoded along with the first output token (leading-space rules)


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int],
                 stop_strings: Sequence[str] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop_strings = list(stop_strings)
        self._holdback = max((len(s) for s in self.stop_strings), default=1) - 1
        self._ids: list[int] = list(prompt_token_ids[-_CONTEXT:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self.text = ""
        self.stopped_by: str | None = None

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add_token(self, token_id: int, check_stop: bool = True) -> str | None:
        """Append one generated token; returns the stop string if it completed one
        (``check_stop=False`` while ``min_tokens`` forbids stopping)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._decode(self._ids[self._prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            new_text = after[len(before):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        else:
            return None  # incomplete character (or nothing visible yet): wait for more
        start = max(0, len(self.text) - self._holdback)
        self.text += new_text
        if not check_stop:
            return None
        for stop in self.stop_strings:
            found = self.text.find(stop, start)
            if found != -1:
                self.text = self.text[:found]
                self.stopped_by = stop
                return stop
        return None

    def visible_text(self, finished: bool) -> str:
        """Text safe to show now: all of it once finished, else minus a possible partial stop."""
        if finished or not self.stop_strings or self._holdback == 0:
            return self.text
        return self.text[: max(0, len(self.text) - self._holdback)]
