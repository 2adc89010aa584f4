"""The `lethe` command (main.py) and its administration commands: rooms, policies,
pending, audit, purge, doctor.

The administration commands act as the bot's own account through the client-server
API (never through the bot's E2EE store, which only the running bot may open) and
read Lethe's database read-only, so they are safe while `lethe run` is running.
"""
