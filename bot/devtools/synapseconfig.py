"""The homeserver.yaml pieces of a local Synapse (bot/devtools/localsynapse.py) that do
not depend on the running process: rate limits and logging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

UNLIMITED: dict[str, float] = {"per_second": 10000, "burst_count": 100000}


def rate_limits(rate_limited: bool) -> dict[str, Any]:
    """Synapse's rate limits for a test or demo server: setup traffic never limited;
    everything else unlimited too unless ``rate_limited``."""
    unlimited = dict(UNLIMITED)
    limits: dict[str, Any] = {
        # Setup traffic (registration, login, joins, room creation) is never throttled,
        # even in rate-limited mode, so only the behaviour under test sees limits.
        "rc_registration": unlimited,
        "rc_registration_token_validity": unlimited,
        "rc_login": {
            "address": unlimited,
            "account": unlimited,
            "failed_attempts": unlimited,
        },
        "rc_joins": {"local": unlimited, "remote": unlimited},
        "rc_joins_per_room": unlimited,
        "rc_room_creation": unlimited,
        "rc_invites": {
            "per_room": unlimited,
            "per_user": unlimited,
            "per_issuer": unlimited,
        },
    }
    if not rate_limited:
        limits.update(
            {
                "rc_message": unlimited,
                "rc_admin_redaction": unlimited,
                "rc_3pid_validation": unlimited,
                "rc_third_party_invite": unlimited,
                "rc_key_requests": unlimited,
                "rc_media_create": unlimited,
                "rc_reports": unlimited,
                "rc_presence": {"per_user": unlimited},
                "rc_delayed_event_mgmt": unlimited,
                "rc_user_directory": unlimited,
                "rc_profile": unlimited,
            }
        )
    # rate_limited=True leaves rc_message at Synapse's default (0.2/s, burst 10).
    return limits


def delayed_redactions(max_delay: str = "7d", per_user: int = 100) -> dict[str, Any]:
    """The homeserver.yaml keys with which Synapse offers delayed redactions: delayed
    events (MSC4140; at most ``max_delay`` ahead, ``per_user`` held per account) and
    redactions sent through /send (MSC4169). For ``LocalSynapse(extra_config=...)``."""
    return {
        "max_event_delay_duration": max_delay,
        "experimental_features": {
            "msc4169_enabled": True,
            "msc4140_max_delayed_events_per_user": per_user,
        },
    }


def log_config(log_path: Path) -> dict[str, Any]:
    """Synapse's logging config: everything into ``log_path``."""
    # A plain FileHandler (no buffering, no rotation) so the tail we show on a failed
    # start is complete, and nothing goes to stdout.
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                "%(request)s - %(message)s"
            }
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(log_path),
                "encoding": "utf8",
            }
        },
        # DEBUG on synapse.storage.SQL would log access tokens; pin it to INFO.
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }
