"""`lethe doctor`'s media checks: whether the files of expired messages are deleted
(a homeserver admin's token that the homeserver accepts as one), and what the
database says of them (waiting, on other servers)."""

from __future__ import annotations

from bot.cli.checks import FAIL, OK, WARN, Check
from bot.config import Config
from bot.engine.ids import server_name
from bot.engine.media import MEDIA_KEPT, describe_media
from bot.engine.store import StoreError, open_store
from bot.matrix.api import HomeserverUnavailable, MatrixHttp


async def media_checks(config: Config, token: Check | None) -> list[Check]:
    """``token``: what admin_token_check said (None: not asked, the homeserver did not
    answer the earlier checks)."""
    erasure = config.erasure
    if erasure.admin_token is None:
        return [Check("media", WARN, f"Redaction does not remove uploaded media: "
                                     f"{MEDIA_KEPT}")]
    checks: list[Check] = []
    if not erasure.media:
        checks.append(Check("media", WARN, f"erasure.media is false: {MEDIA_KEPT}"))
        return checks
    checks += await _database(config, accepted=token is None or token.status == OK)
    return checks


# A media id no upload has: asking the admin API about it answers 404 M_NOT_FOUND
# to an admin only (Synapse's server_version answers anybody, so it proves nothing).
PROBE_MEDIA_ID = "lethe-doctor-probe"


async def admin_token_check(config: Config) -> Check:
    """Is the admin token a homeserver admin's, and does the admin API answer at the
    homeserver's address? Never shows the token: only where it came from."""
    erasure = config.erasure
    assert erasure.admin_token is not None
    source = erasure.token_source
    http = MatrixHttp(config.homeserver.url, erasure.admin_token, timeout_s=15)
    try:
        reply = await http.admin_media_info(server_name(config.bot.user_id), PROBE_MEDIA_ID)
        version = await http.admin_server_version()
    except HomeserverUnavailable as exc:
        return Check("admin token", FAIL, f"could not ask the homeserver: {exc}")
    finally:
        await http.close()
    if reply.ok or (reply.status == 404 and reply.errcode == "M_NOT_FOUND"):
        name = version.body.get("server_version", "?") if version.ok else "?"
        return Check("admin token", OK, f"from {source}: a homeserver admin's (Synapse "
                                        f"{name})")
    if reply.status == 401:
        problem = "is not a valid access token (expired, revoked or mistyped)"
    elif reply.status == 403:
        problem = "is not a homeserver admin's (make the user an admin, or use an admin's)"
    elif reply.status == 404:
        problem = (f"cannot reach Synapse's admin API at {config.homeserver.url}"
                   "/_synapse/admin (a reverse proxy must pass it on)")
    else:
        problem = f"is refused: HTTP {reply.status} {reply.errcode}".rstrip()
    return Check("admin token", FAIL, f"the token from {source} {problem}; media of "
                                      "expired messages are kept until it is accepted")


async def _database(config: Config, *, accepted: bool) -> list[Check]:
    """``accepted``: the homeserver takes the token (or was not asked)."""
    status, lead = ((OK, "the local media of expired messages are deleted") if accepted
                    else (WARN, "the media of expired messages wait for the token"))
    if config.database.absent:
        return [Check("media", status, lead)]
    try:
        store = await open_store(config.database, readonly=True)
    except StoreError as exc:
        return [Check("media", WARN, f"the files of expired messages are unknown: {exc}")]
    try:
        counts = await store.media_counts()
    finally:
        await store.close()
    checks = [Check("media", status, f"{lead}: {describe_media(counts)}")]
    if counts.remote:
        checks.append(Check("media", WARN, f"{counts.remote} file(s) of expired messages "
                                           "are on other servers: only those servers can "
                                           "delete them"))
    return checks
