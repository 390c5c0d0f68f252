"""Logs, metrics and traces of the running broker: how they are shaped and where they go.

Nothing here imports the broker's layers; the composition root (``broker.app``) and
``broker serve`` wire it in. What every part keeps out: row values, tokens and bodies.
"""
