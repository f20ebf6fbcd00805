"""The workers' consumer group as the broker's group coordinator sees it, removing static
members from it (``riskstream group``), and a static worker stopping when another worker took its
instance id (:class:`MemberResets`).

A static member (``group_instance_id``) does not leave its group when it stops: Kafka keeps its
partitions for it until its session timeout ends, so that it can come back without a rebalance.
A worker stopped for good (scaled away) therefore leaves its partitions unscored for that long.
:func:`remove_static_members` removes it at once, as Kafka's Java admin client
(``removeMembersFromConsumerGroup``) does: a LeaveGroup request naming the instance ids
(version 3, KIP-345), after which the group rebalances over the workers still in it.

aiokafka implements LeaveGroup up to version 1 (a member id only) and DescribeGroups up to 3 (no
instance ids), so the two versions needed are declared here from Kafka's protocol schemas
(clients/src/main/resources/common/message/LeaveGroup*.json, DescribeGroups*.json) and sent
through aiokafka's admin client. ``tests/integration/test_static_membership.py`` runs both
against the real broker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Bytes, Int16, Int32, Schema, String

from modeling.errors import RiskstreamError
from modeling.settings import Settings


class GroupError(RiskstreamError):
    """The group coordinator refused a request about the group (``code``: Kafka's error)."""


class DuplicateInstanceError(RiskstreamError):
    """A static worker lost its membership again and again: another running worker uses its
    ``group_instance_id``. Fatal: the worker stops."""


class MemberResets:
    """Stop a static worker that another running worker keeps taking the place of.

    Two workers started with one ``group_instance_id`` should fence each other: Kafka answers the
    older one's next heartbeat with FENCED_INSTANCE_ID, which the Java client treats as fatal.
    aiokafka sends its heartbeats without the instance id (Heartbeat v0 and v1), so the older
    worker hears only that its member id is unknown; it joins again under the same instance id,
    which replaces the newer one, and so on. Measured with two workers on one id: each joined
    again every 3 s (its next heartbeat), taking all four partitions from the other, for as long
    as both ran; a replaced worker goes on scoring until its next heartbeat tells it.

    A member keeps its member id for its life unless the coordinator drops it (another member
    took its instance id, or its session ended while its event loop stalled). So every new
    assignment is checked: a member id other than the last one is a reset, and ``limit`` resets
    within ``window_s`` raise :class:`DuplicateInstanceError`. A single stall costs one reset.
    The two workers reset each other in turn, so with one limit both stopped, about 10 s after
    the second joined. A worker that found a member on its instance id in the group when it
    started (``replacing``: a restart, or the second of two) tolerates two resets more, so the
    older one stops first and the newer one goes on, as the Java client's fencing has it.
    """

    def __init__(
        self,
        instance_id: str,
        limit: int = 3,
        window_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        replacing: bool = False,
    ) -> None:
        self.instance_id = instance_id
        self.limit = limit + 2 if replacing else limit
        self.window_s = window_s
        self.clock = clock
        self.member_id: str | None = None
        self.resets: deque[float] = deque()

    def assigned(self, member_id: str) -> bool:
        """Called with the member id of each assignment; True when it is a reset."""
        last, self.member_id = self.member_id, member_id
        if last is None or member_id == last:
            return False
        now = self.clock()
        self.resets.append(now)
        while self.resets and self.resets[0] < now - self.window_s:
            self.resets.popleft()
        if len(self.resets) >= self.limit:
            raise DuplicateInstanceError(
                "this worker lost its group membership repeatedly: another running worker uses "
                "its group instance id (RISKSTREAM_GROUP_INSTANCE_ID); give each worker its own",
                instance_id=self.instance_id,
                resets=len(self.resets),
                window_s=self.window_s,
            )
        return True


class _LeaveGroupResponseV3(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")), ("group_instance_id", String("utf-8")), ("error_code", Int16)
            ),
        ),
    )


class _LeaveGroupRequestV3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponseV3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class _LeaveGroup(Request[_LeaveGroupRequestV3]):  # type: ignore[misc]
    API_KEY = 13

    def __init__(self, group: str, instance_ids: list[str]) -> None:
        self._group = group
        self._ids = instance_ids

    def build(self, request_struct_class: type[_LeaveGroupRequestV3]) -> _LeaveGroupRequestV3:
        # the member id is unknown to us: the coordinator finds the member by its instance id
        return request_struct_class(self._group, [("", i) for i in self._ids])


class _DescribeGroupsResponseV4(Response):  # type: ignore[misc]
    API_KEY = 15
    API_VERSION = 4
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "groups",
            Array(
                ("error_code", Int16),
                ("group", String("utf-8")),
                ("state", String("utf-8")),
                ("protocol_type", String("utf-8")),
                ("protocol", String("utf-8")),
                (
                    "members",
                    Array(
                        ("member_id", String("utf-8")),
                        ("group_instance_id", String("utf-8")),
                        ("client_id", String("utf-8")),
                        ("client_host", String("utf-8")),
                        ("member_metadata", Bytes),
                        ("member_assignment", Bytes),
                    ),
                ),
                ("authorized_operations", Int32),
            ),
        ),
    )


class _DescribeGroupsRequestV4(RequestStruct):  # type: ignore[misc]
    API_KEY = 15
    API_VERSION = 4
    RESPONSE_TYPE = _DescribeGroupsResponseV4
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


class _DescribeGroup(Request[_DescribeGroupsRequestV4]):  # type: ignore[misc]
    API_KEY = 15

    def __init__(self, group: str) -> None:
        self._group = group

    def build(self, request_struct_class: type[_DescribeGroupsRequestV4]) -> _DescribeGroupsRequestV4:
        return request_struct_class([self._group], False)


@dataclass(frozen=True)
class Member:
    member_id: str
    instance_id: str | None  # None: a dynamic member
    client_host: str
    partitions: dict[str, list[int]] = field(default_factory=dict)  # topic -> its partitions


@dataclass(frozen=True)
class GroupView:
    group: str
    state: str  # Stable, PreparingRebalance, CompletingRebalance, Empty, Dead
    members: list[Member]

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "state": self.state,
            "members": [
                {
                    "member_id": m.member_id,
                    "instance_id": m.instance_id,
                    "client_host": m.client_host,
                    "partitions": m.partitions,
                }
                for m in self.members
            ],
        }


def _check(code: int, what: str, **context: Any) -> None:
    if code:
        raise GroupError(f"{what}: {for_code(code).__name__}", code=code, **context)


async def _ask_coordinator(settings: Settings, request: Any) -> Any:
    """Send ``request`` about the workers' group (``settings.app_id``) to its coordinator."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.security import client_kwargs

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_kwargs(settings))
    await admin.start()
    try:
        node = await admin.find_coordinator(settings.app_id)
        return await admin._send_request(request, node)
    finally:
        await admin.close()


async def describe_group(settings: Settings) -> GroupView:
    """The workers' group (``settings.app_id``): its state, and each member's instance id, host
    and the partitions assigned to it."""
    from aiokafka.coordinator.protocol import ConsumerProtocol

    resp = await _ask_coordinator(settings, _DescribeGroup(settings.app_id))
    (code, group, state, _ptype, _protocol, members, _ops) = resp.groups[0]
    _check(code, "the group could not be described", group=settings.app_id)
    out = []
    for member_id, instance_id, _client, host, _meta, assignment in members:
        parts: dict[str, list[int]] = {}
        if assignment:
            for topic, ps in ConsumerProtocol.ASSIGNMENT.decode(assignment).assignment:
                parts[topic] = sorted(ps)
        out.append(Member(member_id, instance_id, host.lstrip("/"), dict(sorted(parts.items()))))
    return GroupView(group, state, sorted(out, key=lambda m: (m.instance_id or "", m.member_id)))


async def instance_in_group(settings: Settings) -> bool:
    """Whether a member of the workers' group has this worker's instance id now (before it
    joins). False, with a warning, when the group cannot be described (an ACL, say)."""
    import logging

    from aiokafka.errors import KafkaError

    try:
        view = await describe_group(settings)
    except (KafkaError, GroupError) as exc:
        logging.getLogger("riskstream.worker").warning(
            "could not describe group %s: %s", settings.app_id, exc
        )
        return False
    return any(m.instance_id == settings.group_instance_id for m in view.members)


async def remove_static_members(settings: Settings, instance_ids: list[str]) -> dict[str, str | None]:
    """Take static members out of the workers' group now, as if they had left it (their
    partitions move to the workers still in the group). Per instance id: None once removed, or
    the coordinator's error for it (``UnknownMemberIdError``: no member has that id)."""
    resp = await _ask_coordinator(settings, _LeaveGroup(settings.app_id, instance_ids))
    _check(resp.error_code, "the group coordinator refused to remove members", group=settings.app_id)
    return {iid: (for_code(code).__name__ if code else None) for _member, iid, code in resp.members}


def watch_member_resets(app: Any, resets: MemberResets) -> None:
    """Check the member id of each of ``app``'s assignments with ``resets``; on
    :class:`DuplicateInstanceError`, log it and crash the app (the worker exits non-zero)."""
    import asyncio
    import logging

    from streams.intake import aiokafka_consumer

    log = logging.getLogger("riskstream.worker")
    crashing: list[asyncio.Future[Any]] = []  # keeps the crash task referenced while it runs

    @app.on_partitions_assigned.connect  # type: ignore[untyped-decorator]
    async def check_member(sender: Any, *args: Any, **kwargs: Any) -> None:
        member = getattr(getattr(aiokafka_consumer(app.consumer), "_coordinator", None), "member_id", None)
        if not member:
            return
        try:
            if resets.assigned(member):
                log.warning(
                    "static member %s lost its membership and joined again as %s (%d such resets in "
                    "%.0f s; %d stop the worker): its session ended, or another worker uses its instance id",
                    resets.instance_id,
                    member,
                    len(resets.resets),
                    resets.window_s,
                    resets.limit,
                )
        except DuplicateInstanceError as exc:
            log.critical("stopping: %s", exc)
            # not awaited: Faust awaits this signal inside the rebalance that the crash stops
            crashing.append(asyncio.ensure_future(app.crash(exc)))
