"""Herald's Dramatiq actors and what they run on.

Importing a module of this package sets nothing up: no broker, no logging, no
connections; an actor module only declares its actor (:func:`actors.broker.actor`).
A worker starts from :mod:`actors.worker`, which sets up the broker and puts
every declared actor on it; a process that only sends messages calls
:func:`actors.broker.setup_broker` and sends by actor name
(:func:`actors.broker.send`).
"""
