"""Progress bars on stderr, shown only to a person at a terminal."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, description: str, enabled: bool = True, unit: str = "eval") -> tqdm:
    """A bar counting ``unit``s (evaluations, epochs, cells) that stays silent when ``enabled`` is false
    (``--quiet``) or stderr is not a terminal; ``set_postfix`` shows running figures beside it."""
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=not enabled or not sys.stderr.isatty())
