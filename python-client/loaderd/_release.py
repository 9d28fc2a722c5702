"""When to give a batch ring's slots back to the daemon.

A slot may go back only once nothing reads it any more. On the host the reader is the trainer
itself, done with a view when it asks for the next batch, so the slot goes back with that
request. On a GPU the readers are the trainer's kernels (or the copy out of a registered host
slot), which may still be queued on the device when the trainer asks for the next batch: the
slot then goes back one batch later, after the event recorded for it has completed, which by
then it long has, so the common case never waits. Each request can give back one slot (the
wire's ``NextBatch.release_slot``), and this client never holds every slot of the ring: the
daemon always has one to fill.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Generic, List, Optional, Tuple, TypeVar

#: What marks a slot's readers done (a ``torch.cuda.Event``), or ``None`` when nothing does.
Token = TypeVar("Token")


class ReleaseQueue(Generic[Token]):
    """The slots this client holds, in delivery order, and which one each request frees.

    ``lag`` is how many batches a slot outlives its own (0 on the host, 1 on a GPU), capped at
    ``depth - 1`` so that the slots held before a request never fill the ring.
    """

    def __init__(self, depth: int, lag: int) -> None:
        if depth < 1:
            raise ValueError(f"a batch ring has at least one slot, not {depth}")
        self.keep = max(0, min(lag, depth - 1))
        self._current: Optional[int] = None
        self._pending: Deque[Tuple[int, Optional[Token]]] = deque()

    @property
    def held(self) -> int:
        """Slots delivered and not yet given back."""
        return len(self._pending) + (self._current is not None)

    def delivered(self, slot: int) -> None:
        """The daemon delivered ``slot``: the batch the trainer reads now."""
        if self._current is not None:
            raise RuntimeError("a batch was delivered before the previous one was requested past")
        self._current = slot
        # The wire gives back one slot per request, so at most ``keep`` are ever pending.
        assert len(self._pending) <= self.keep

    def request(self, token: Optional[Token]) -> Optional[Tuple[int, Optional[Token]]]:
        """The trainer asks for the next batch; ``token`` marks the current batch's readers
        done. Returns the slot to give back with this request and the token to wait for
        first, or ``None`` when none is due."""
        if self._current is not None:
            self._pending.append((self._current, token))
            self._current = None
        if len(self._pending) > self.keep:
            return self._pending.popleft()
        return None

    def drain(self) -> List[Tuple[int, Optional[Token]]]:
        """Every slot still held (at close), oldest first, the current one with no token."""
        held = list(self._pending)
        if self._current is not None:
            held.append((self._current, None))
        self._pending.clear()
        self._current = None
        return held
