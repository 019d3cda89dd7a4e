"""Cluster mode on Ray (SPEC section 10): shards behind the session façade.

- :mod:`actors.cluster.placement`: which shard owns a session, a user's
  directory, the actors' names (pure functions, no Ray);
- :mod:`actors.cluster.codec`: the plain values that cross Ray (errors,
  messages, pages, frames);
- :mod:`actors.cluster.shard`: the shard, a detached named Ray actor hosting
  the same :class:`actors.registry.ActorRegistry` as single node, and the
  cluster's ``roost-meta`` actor;
- :mod:`actors.cluster.front`: what a front (``roost serve --cluster``) puts
  behind ``registry.session(sid, user)``: :class:`ClusterRegistry`.

Only ``roost serve --cluster`` imports this package; it needs ``ray``
(``pip install -e '.[cluster]'``).
"""
