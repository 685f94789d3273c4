"""The e2e scenarios' own judgement of committed world sizes (``e2e.scenarios``)."""

from __future__ import annotations

import pytest

from e2e.scenarios import without_startup


@pytest.mark.parametrize(("world", "first", "expected"), [
    ((1, 2), 2, (2,)),  # a job of 2: the first pod trained while the second started
    ((1, 2, 3), 3, (3,)),
    ((1, 2, 1), 2, (2, 1)),  # the growth is folded, the shrink after it is kept
    ((1, 2), 1, (1, 2)),  # a job that starts at 1 and is scaled up: a real resize
    ((2, 1, 2), 2, (2, 1, 2)),  # a shrink and regrowth is never start-up
    ((1, 3), 2, (1, 3)),  # growth past the initial size is a resize
    ((2,), 2, (2,)),
    ((), 2, ()),
])
def test_only_the_growth_up_to_the_initial_size_is_start_up(
        world: tuple[int, ...], first: int, expected: tuple[int, ...]) -> None:
    assert without_startup(world, first) == expected
