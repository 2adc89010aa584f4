"""Lethe's appservice bridge: server-wide enforcement by push, on the same engine as the bot."""
