"""What `lethe` prints to a person's terminal: libraries never louder than Lethe."""

from __future__ import annotations

import logging

from bot.cli.common import QUIET_LIBRARIES, setup_logging


def test_libraries_are_never_louder_than_the_chosen_level() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers),
             {name: logging.getLogger(name).level for name in QUIET_LIBRARIES})
    try:
        setup_logging("ERROR")  # what `lethe demo` asks for
        assert not logging.getLogger("nio.crypto.log").isEnabledFor(logging.WARNING)
        setup_logging("INFO")
        assert logging.getLogger("nio.crypto.log").isEnabledFor(logging.WARNING)
        assert not logging.getLogger("nio.crypto.log").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
