"""Progress bars on stderr, shown only to a person at a terminal."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, description: str, enabled: bool = True) -> tqdm:
    """A bar that stays silent when ``enabled`` is false (``--quiet``) or stderr is not a terminal."""
    return tqdm(total=total, desc=description, unit="eval", file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=not enabled or not sys.stderr.isatty())
