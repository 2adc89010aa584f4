"""A policy written in the config: ``policy.on_join`` and ``bridge.default_policy``
share one syntax, ``{mode: after_send, timer: 1d}`` or ``{mode: after_read, timer: 1h,
cap: 3d, readers: any}`` (``{mode: off}`` for none), and this one reader. Operator
bounds on policies, when they come, are checked here too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.engine.policy import Mode, Policy, PolicyError, Readers, after_read_policy

if TYPE_CHECKING:
    from bot.config import ConfigReader

_POLICY_KEYS = ("mode", "timer", "cap", "readers")


def policy_setting(r: ConfigReader, section: dict[str, Any], key: str,
                   default_cap_ms: int) -> Policy | None:
    """The policy at ``key`` (its last part a key of ``section``); None when absent.
    Errors name the key (``policy.on_join.timer: ...``)."""
    raw = section.get(key.rsplit(".", 1)[-1])
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise r.fail(key, f"must be a mapping like {{mode: after_send, timer: 1d}}, "
                          f"not {type(raw).__name__}")
    if not raw:
        return None
    unknown = sorted(str(k) for k in set(raw) - set(_POLICY_KEYS))
    if unknown:
        raise r.fail(f"{key}.{unknown[0]}", "unknown key; expected mode, timer, cap or readers")
    mode_raw = raw.get("mode")
    try:
        # YAML reads a bare off as false.
        mode = Mode.OFF if mode_raw is False else Mode(str(mode_raw))
    except ValueError:
        raise r.fail(f"{key}.mode", f"must be off, after_send or after_read, "
                                    f"not {mode_raw!r}") from None
    if mode is Mode.OFF:
        if set(raw) - {"mode"}:
            raise r.fail(key, "an off policy has no timer, cap or readers")
        return Policy.off()
    if raw.get("timer") is None:
        raise r.fail(f"{key}.timer", f"is required for {mode.value}, e.g. 3d")
    timer = r.duration(raw, f"{key}.timer", "")
    if mode is Mode.AFTER_SEND:
        if "cap" in raw or "readers" in raw:
            raise r.fail(key, "cap and readers apply only to after_read")
        return Policy.after_send(timer)
    # No cap: the default cap (bot/engine/policy.py, after_read_policy).
    cap = None if raw.get("cap") is None else r.duration(raw, f"{key}.cap", "")
    try:
        readers = Readers(str(raw.get("readers", Readers.ALL.value)))
    except ValueError:
        raise r.fail(f"{key}.readers", f"must be all or any, not {raw.get('readers')!r}") \
            from None
    try:
        return after_read_policy(timer, cap, readers, default_cap_ms)
    except PolicyError as exc:
        raise r.fail(key, str(exc)) from None


def read_on_join(r: ConfigReader) -> Policy | None:
    """``policy.on_join``; None when absent or off (nothing to put in force)."""
    policy = policy_setting(r, r.section("policy"), "policy.on_join", r.default_cap_ms())
    return policy if policy is not None and policy.active else None
