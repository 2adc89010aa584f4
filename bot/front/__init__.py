"""The bot front: a matrix-nio client (end-to-end encryption through vodozemac) that
users invite into rooms. It turns syncs into engine input, runs the engine's
redactions through the client-server API, and answers in-room commands."""
