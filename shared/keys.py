"""Every Redis key and channel the gateway uses. Nobody else spells a key.

All names start with the configured prefix (``reactor:`` by default) so that several
gateways, or several test runs, can share one Redis. arq's own job keys (``arq:job:…``)
are the exception: arq spells those itself, and our job ids are random so they never collide.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "reactor:"

    def queue(self, provider: str) -> str:
        """The arq queue (a sorted set) of one provider's worker pool."""
        return f"{self.prefix}queue:{provider}"

    def queue_notify(self, provider: str) -> str:
        """Pub/sub channel published after each enqueue so idle workers wake at once."""
        return f"{self.queue(provider)}:notify"

    def reply_channel(self, process_id: str) -> str:
        """Pub/sub channel of one front-door process; every reply message names its request."""
        return f"{self.prefix}reply:{process_id}"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel on which the front door asks every worker to drop a request."""
        return f"{self.prefix}cancel"

    def workers(self, provider: str) -> str:
        """Sorted set of the worker ids serving a provider, scored by their last heartbeat (unix s).

        A set rather than a key per worker so that health is one ZCOUNT, never a SCAN.
        """
        return f"{self.prefix}workers:{provider}"

    def worker_slots(self, provider: str) -> str:
        """Hash of worker id → how many jobs that worker holds at once, for the front door's backpressure.

        Beside :meth:`workers` rather than in it: liveness stays one ZCOUNT, and capacity is read
        only for the workers that are alive.
        """
        return f"{self.prefix}workers:{provider}:slots"

    def usage_seen(self, request_id: str) -> str:
        """Marks a request as metered; lives long enough to outlast any retry of its job."""
        return f"{self.prefix}usage:seen:{request_id}"

    def usage_counters(self, day: str, user_id: str, model_id: str) -> str:
        """Hash of requests, tokens_in, tokens_out, cost_usd for one user, model and UTC day."""
        return f"{self.prefix}usage:{day}:{user_id}:{model_id}"

    def usage_index(self, day: str) -> str:
        """Set of ``user_id\\tmodel_id`` pairs with counters on that day, for inspection without SCAN."""
        return f"{self.prefix}usage:index:{day}"

    @property
    def usage_events(self) -> str:
        """The stream of ``ai.usage`` events that Analytics consumes."""
        return f"{self.prefix}events:ai.usage"

    def round_robin(self, alias: str) -> str:
        return f"{self.prefix}rr:{alias}"

    # -- route health, shared by every worker and replica ------------------------------------------

    def route_failures(self, provider: str, model: str) -> str:
        """Failures of one route in the current cooldown window (a counter that expires with the window)."""
        return f"{self.prefix}route:{provider}:{model}:failures"

    def route_cooldown(self, provider: str, model: str) -> str:
        """Present while the route cools down; its TTL is the cooldown, so it comes back by itself."""
        return f"{self.prefix}route:{provider}:{model}:cooldown"

    def route_probation(self, provider: str, model: str) -> str:
        """Present after a cooldown until the route succeeds once: one more failure cools it again."""
        return f"{self.prefix}route:{provider}:{model}:probation"

    @property
    def route_stats(self) -> str:
        """Hash of ``provider\\tmodel\\tfield`` → decaying averages (time to first token, error rate)
        that the ``fastest`` strategy reads: one HMGET for every candidate of a request."""
        return f"{self.prefix}route:stats"

    # -- quotas (shared/quota.py) -------------------------------------------------------------------

    def quota_minute(self, user_id: str, minute: int) -> str:
        """Hash of ``requests`` and ``tokens`` one user was admitted for in one minute (unix time // 60).

        A fixed window named by its number: its counters are one key that expires by itself (a
        TTL of about two minutes), and a settlement that arrives after the minute still finds the
        window it reserved in. The window comes before the user id, which may contain ``:``.
        """
        return f"{self.prefix}quota:m:{minute}:{user_id}"

    def quota_day(self, user_id: str, day: int) -> str:
        """Hash of ``tokens`` (reserved, then settled) and ``usd`` (settled spend) of one user on one
        UTC day (unix time // 86400); lives about two days, so late settlements still land in it."""
        return f"{self.prefix}quota:d:{day}:{user_id}"

    def quota_settled(self, request_id: str) -> str:
        """Marks a request's quota reservation as settled, so a second settlement (a worker that was
        only slow after the front door settled for it) changes nothing; expires after an hour."""
        return f"{self.prefix}quota:settled:{request_id}"
