"""Incremental detokenization with stop strings held back until they are ruled out."""
from __future__ import annotations

from .sequence import Sequence


def update_text(seq: Sequence, tokenizer) -> tuple[str, bool]:
    """Re-decode ``seq``'s output and return (new text to emit, a stop string was hit).

    The full output is decoded each step (robust to multi-token characters); text ending in
    an incomplete UTF-8 character (U+FFFD) or in a prefix of a stop string is held back.
    On a stop string, ``seq.text`` is cut just before it.
    """
    if tokenizer is None:
        return "", False
    full = tokenizer.decode(seq.output_ids, skip_special_tokens=True)
    stops = seq.sampling.stop
    hit = False
    if stops:
        cut = min((i for i in (full.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            full, hit = full[:cut], True
    safe = len(full)
    if not hit:
        while safe > 0 and full[safe - 1] == "\ufffd":
            safe -= 1
        hold = 0
        for s in stops:                   # hold back a suffix that may start a stop string
            for j in range(min(len(s) - 1, safe), 0, -1):
                if full[safe - j:safe] == s[:j]:
                    hold = max(hold, j)
                    break
        safe -= hold
    seq.text = full
    new = full[seq.emitted_text_len:safe] if safe > seq.emitted_text_len else ""
    seq.emitted_text_len = max(seq.emitted_text_len, safe)
    return new, hit


def flush_text(seq: Sequence) -> str:
    """Everything not yet emitted (called when the sequence finishes)."""
    new = seq.text[seq.emitted_text_len:]
    seq.emitted_text_len = len(seq.text)
    return new
