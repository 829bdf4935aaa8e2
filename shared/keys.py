"""Every Redis key and channel the gateway uses. Nobody else spells a key.

All names start with the configured prefix (``reactor:`` by default) so that several
gateways, or several test runs, can share one Redis. arq's own job keys (``arq:job:…``)
are the exception: arq spells those itself, and our job ids are random so they never collide.
Keys that one script touches together share a Redis Cluster hash tag where the README's
"Redis" part says the script runs on a cluster (see :meth:`Keys.job_id`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "reactor:"

    def queue(self, provider: str) -> str:
        """The arq queue (a sorted set) of one provider's worker pool."""
        return f"{self.prefix}queue:{provider}"

    def job_id(self, provider: str, job_id: str) -> str:
        """The arq job id ``job_id`` is queued under in ``provider``'s pool: led by the pool's queue
        name in braces, a Redis Cluster hash tag. Cluster hashes only what is inside the braces, and
        the queue key (no braces) hashes as a whole, so every key arq spells from the id
        (``arq:job:…``, ``arq:in-progress:…``, ``arq:retry:…``) lives in the queue's slot and the
        admission, claim and end scripts touch one slot. The queue key keeps its name."""
        return f"{{{self.queue(provider)}}}{job_id}"

    def queue_user_jobs(self, provider: str, user_id: str) -> str:
        """Sorted set of the job ids one user holds in a provider's pool (queued or running), each
        scored by when it is forgotten even if its end is never cleared (unix ms): the per-user
        share of the pool is counted here, by the admission script, and the end-of-job script
        removes the id. The queue's name in braces leads it (a Redis Cluster hash tag, as in
        :meth:`job_id`), so the admission script's keys share the queue's slot. The user id comes
        last: it may contain ``:``."""
        return f"{{{self.queue(provider)}}}:user:{user_id}"

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

    # -- identity (api/identity.py) -----------------------------------------------------------------

    @property
    def identity_emails(self) -> str:
        """Hash of normalised email → user id: sign-in's lookup, and the user list without SCAN."""
        return f"{self.prefix}identity:emails"

    def identity_user(self, user_id: str) -> str:
        """Hash of one user: ``id``, ``email``, ``password`` (an argon2id hash), ``disabled``, ``created_at``."""
        return f"{self.prefix}identity:user:{user_id}"

    def identity_user_sessions(self, user_id: str) -> str:
        """Set of the session ids a user signed in with, so disabling or removing the user ends them all."""
        return f"{self.prefix}identity:user:{user_id}:sessions"

    def identity_session(self, session_id: str) -> str:
        """Hash of one sign-in session (a refresh-token family): ``user`` and ``current``, the sha256 of
        the only refresh token that may still be used. Its TTL is the refresh token's; deleting it
        revokes the session."""
        return f"{self.prefix}identity:session:{session_id}"

    def identity_refresh(self, token_sha256: str) -> str:
        """Hash of one refresh token, named by its sha256 (the token itself is never stored): ``user``
        and ``session``. Kept after it is spent, until its TTL, so that a reuse is recognised."""
        return f"{self.prefix}identity:refresh:{token_sha256}"

    def identity_failures_email(self, email: str) -> str:
        """Failed sign-ins for one account in the current window (a counter that expires with it)."""
        return f"{self.prefix}identity:failures:email:{email}"

    def identity_failures_address(self, address: str) -> str:
        """Failed sign-ins from one client address in the current window."""
        return f"{self.prefix}identity:failures:address:{address}"

    # -- stored responses (api/responses.py) --------------------------------------------------------

    def stored_response(self, response_id: str) -> str:
        """JSON of one stored Responses API response: its owner, the conversation's input items (the
        chain of earlier turns included, instructions left out) and the response object. Its TTL is
        the storage period; ``previous_response_id`` reads it in one GET, however long the chain."""
        return f"{self.prefix}responses:{response_id}"

    # -- analytics feed (shared/analytics.py) -------------------------------------------------------

    @property
    def analytics_group(self) -> str:
        """The consumer group on :attr:`usage_events` that the Analytics forwarders share: its pending
        entries list holds every event handed to a forwarder and not yet acknowledged by Analytics.
        A group lives inside its stream, so the name carries no prefix."""
        return "analytics"

    def analytics_status(self, group: str) -> str:
        """Hash of one forwarder group's progress, for ``reactor analytics status``: ``delivered``
        (events Analytics accepted, re-deliveries included), ``last_delivery_at``, ``last_error`` and
        ``last_error_at``."""
        return f"{self.prefix}analytics:{group}:status"
