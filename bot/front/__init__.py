"""The bot front: a matrix-nio client (end-to-end encryption through vodozemac) that
users invite into rooms. It turns syncs into engine input, runs the engine's
redactions through the client-server API, and answers in-room commands.

``bot`` (lifecycle), ``sync`` (the sync loop), ``catchup`` (paging back over gaps),
``reader`` (a sync read into engine updates, no I/O), ``actions`` (the follow-up
worker: joins, notices, power, commands), ``texts`` (every text sent to a room),
``commands`` (in-room command parsing), ``client`` (login and key store), ``joins``,
``pace``, ``throttle`` and ``untracked``."""
