"""One line for the run log from a Ray exception: what a task raised, why an actor died."""

from __future__ import annotations

from ray.exceptions import ActorDiedError, RayTaskError


def task_cause(error: RayTaskError) -> str:
    """The exception the task itself raised, else the error's first line."""
    cause = getattr(error, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return first_line(error)


def death_reason(error: ActorDiedError) -> str:
    """For a constructor that raised, its exception line (the last of the traceback); else line one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "creation task" in str(error) and lines:
        return f"its constructor raised {lines[-1][:300]}"
    return first_line(error)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
