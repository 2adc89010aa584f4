"""Development tools, not the product: a local Synapse (and two federating on
loopback), scripted test people, and `lethe demo`, which puts them together."""
