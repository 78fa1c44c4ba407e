"""The fake generator's settings: light to import (the run config validates them at every CLI start)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FakeGeneratorConfig(BaseModel):
    """Settings of FakeGenerator (the run config's `generator.fake` section; tests and benchmarks)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    size: int = Field(64, ge=8, le=2048)
    latency_s: float = Field(0.0, ge=0.0)  # per image
    batch_latency_s: float = Field(0.0, ge=0.0)  # per generate() call
    fail_uids: tuple[str, ...] = ()
    fail_prompts: tuple[str, ...] = ()  # prompt substrings that make generation raise
    hang_uids: tuple[str, ...] = ()  # hang on these uids the first time (a flag file marks "done once")
    hang_flag_dir: str | None = None
    hang_s: float = Field(3600.0, ge=0.0)
    hang_every_time: bool = False  # hang_uids hang on every run, not only the first
    crash_uids: tuple[str, ...] = ()  # exit the process on these uids, every time
