"""Herald's Dramatiq actors and what they run on.

Importing a module of this package sets nothing up: no broker, no logging, no
connections. A worker starts from :mod:`actors.worker`, which sets up the
broker and declares every actor; a process that only sends messages calls
:func:`actors.broker.setup_broker` and sends by actor name
(:func:`actors.broker.send`).
"""
