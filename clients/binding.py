"""Typed method descriptors: how one table of RPCs becomes methods of two clients.

``AsyncMethod(rpc, build)`` placed in a class body becomes a method with ``build``'s signature
that builds the request and awaits ``self.call(rpc, request)``; ``SyncMethod`` does the same
for a blocking ``call``. ``ParamSpec`` carries the builder's parameters into the method's type,
so ``client.debit(user_id, amount_micros=5)`` is checked by mypy although ``debit`` is written
once (in ``clients.builders``) for both clients. ``as_is(rpc)`` is the builder of the raw
methods, which take the request message itself.

Why descriptors instead of 2 x 37 hand-written wrappers: the wrappers would all be the same two
lines, and a copy that drifts (a forgotten keyword in the sync client, say) is a bug that only
the user finds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, Protocol, Self, overload

from creditwallet.client.rpc_table import RequestT, ResponseT, Rpc

P = ParamSpec("P")


class AsyncCaller(Protocol):
    """Anything that can await one RPC with the clients' policy: the async client."""

    async def call(self, rpc: Rpc[RequestT, ResponseT], request: RequestT) -> ResponseT: ...


class SyncCaller(Protocol):
    """Anything that can make one blocking RPC with the clients' policy: the sync client."""

    def call(self, rpc: Rpc[RequestT, ResponseT], request: RequestT) -> ResponseT: ...


def as_is(rpc: Rpc[RequestT, ResponseT]) -> Callable[[RequestT], RequestT]:
    """The builder of a raw method: the caller already has the request message."""

    def build(request: RequestT) -> RequestT:
        return request

    build.__doc__ = f"Calls {rpc.service}.{rpc.name} with the given request message."
    return build


class AsyncMethod(Generic[P, RequestT, ResponseT]):
    """A coroutine method: ``await owner.call(rpc, build(*args, **kwargs))``."""

    def __init__(self, rpc: Rpc[RequestT, ResponseT], build: Callable[P, RequestT]) -> None:
        self.rpc = rpc
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, owner: None, owner_type: type[Any]) -> Self: ...

    @overload
    def __get__(
        self, owner: AsyncCaller, owner_type: type[Any]
    ) -> Callable[P, Awaitable[ResponseT]]: ...

    def __get__(
        self, owner: AsyncCaller | None, owner_type: type[Any]
    ) -> Self | Callable[P, Awaitable[ResponseT]]:
        if owner is None:
            return self
        rpc, build = self.rpc, self.build

        async def method(*args: P.args, **kwargs: P.kwargs) -> ResponseT:
            # Built once, before the first attempt: every retry sends this same message.
            return await owner.call(rpc, build(*args, **kwargs))

        method.__doc__ = build.__doc__
        method.__name__ = build.__name__ if build.__name__ != "build" else rpc.name
        return method


class SyncMethod(Generic[P, RequestT, ResponseT]):
    """A blocking method: ``owner.call(rpc, build(*args, **kwargs))``."""

    def __init__(self, rpc: Rpc[RequestT, ResponseT], build: Callable[P, RequestT]) -> None:
        self.rpc = rpc
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, owner: None, owner_type: type[Any]) -> Self: ...

    @overload
    def __get__(self, owner: SyncCaller, owner_type: type[Any]) -> Callable[P, ResponseT]: ...

    def __get__(
        self, owner: SyncCaller | None, owner_type: type[Any]
    ) -> Self | Callable[P, ResponseT]:
        if owner is None:
            return self
        rpc, build = self.rpc, self.build

        def method(*args: P.args, **kwargs: P.kwargs) -> ResponseT:
            return owner.call(rpc, build(*args, **kwargs))

        method.__doc__ = build.__doc__
        method.__name__ = build.__name__ if build.__name__ != "build" else rpc.name
        return method


def raw_async(rpc: Rpc[RequestT, ResponseT]) -> AsyncMethod[[RequestT], RequestT, ResponseT]:
    """A coroutine method taking ``rpc``'s request message."""
    return AsyncMethod(rpc, as_is(rpc))


def raw_sync(rpc: Rpc[RequestT, ResponseT]) -> SyncMethod[[RequestT], RequestT, ResponseT]:
    """A blocking method taking ``rpc``'s request message."""
    return SyncMethod(rpc, as_is(rpc))
