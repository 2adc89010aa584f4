"""The nio-free Matrix layer both fronts (bot/front, bridge/) and the admin commands
share: ``api`` (every client-server endpoint Lethe calls without nio, and the one
``/messages`` pager), ``transport`` (the engine's redactions over it), ``events`` (raw
event JSON -> engine values), ``roomstate`` and ``policy_state`` (a room's policy and
who may change it: read, checked, written), ``credentials``,
``files`` (owner-only files), ``crosssigning`` and ``trust`` (E2EE identities)."""
