"""Lethe's appservice bridge: server-wide enforcement by push, on the same engine as the bot.

``app`` (lifecycle, ping, one transaction at a time), ``server`` (the appservice HTTP
API), ``intake`` (checks on what is pushed), ``transaction`` (split into rooms and
stored), ``rooms`` (what the bridge knows of each room, no I/O), ``firstsight`` (the
state of a room met for the first time), ``followup`` (power, owners, invites after
each commit), ``transport`` (redacting as the sender or the bridge's bot),
``registration``, ``config`` and ``cli``."""
