"""What one chat runs with: model, frame sampling, generation, engine and V-Reason settings, and the mode.

The chat takes the same options as `vreason run` (the same click options, read and checked by the same
`options.read_settings`); this module holds them as one value the app can change
(settings screen, video panel) and store with each session, so a resumed session encodes the video the
same way and its follow-ups continue the stored conversation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..events import Mode
from ..settings import EngineSettings, FrameSampling, GenerationSettings, RunSettings, TokenSampling, VReasonSettings


@dataclass(frozen=True)
class ChatOptions:
    """Everything a chat needs to plan, load and answer. `vreason` is always set: the mode can be switched
    to V-Reason at any question, so its settings (and the engine's value-cache hook) are always ready."""

    model: str
    mmproj: str | None
    video: Path | None
    frames: FrameSampling
    gen: GenerationSettings
    engine: EngineSettings
    vreason: VReasonSettings
    mode: Mode = "base"
    token_budget: int | None = None
    n_ctx: int | None = None

    @classmethod
    def from_settings(cls, settings: RunSettings, video: Path | None) -> ChatOptions:
        """From the run settings (`--mode` is the starting mode); the engine always loads the hook."""
        return cls(
            model=settings.model,
            mmproj=settings.mmproj,
            video=video,
            frames=settings.frames,
            gen=settings.generation,
            engine=replace(settings.engine, n_ctx=None, hook=True),
            vreason=settings.vreason,
            mode=settings.mode,
            token_budget=settings.token_budget,
            n_ctx=settings.engine.n_ctx,
        )

    @property
    def settings(self) -> RunSettings:
        """The run settings these options plan with (`planning.plan_run`)."""
        return RunSettings(
            model=self.model,
            mmproj=self.mmproj,
            mode=self.mode,
            generation=self.gen,
            frames=self.frames,
            engine=replace(self.engine, n_ctx=self.n_ctx),
            vreason=self.vreason,
            token_budget=self.token_budget,
        )

    def as_dict(self) -> dict:
        """JSON-able settings stored with a session (the model and video are stored on their own)."""
        return {
            "mmproj": self.mmproj,
            "frames": asdict(self.frames),
            "generation": asdict(self.gen),
            "engine": asdict(self.engine),
            "vreason": asdict(self.vreason),
            "mode": self.mode,
            "token_budget": self.token_budget,
            "n_ctx": self.n_ctx,
        }

    def with_stored(self, settings: dict) -> ChatOptions:
        """These options with a stored session's frame, generation and V-Reason settings, so its video is
        sampled (and so keyed) as before; engine settings (threads, GPU layers) stay this machine's."""
        gen = dict(settings.get("generation") or asdict(self.gen))
        gen["sampling"] = TokenSampling(**gen["sampling"])
        return replace(
            self,
            mmproj=self.mmproj or settings.get("mmproj"),
            frames=FrameSampling(**settings["frames"]) if settings.get("frames") else self.frames,
            gen=GenerationSettings(**gen),
            vreason=VReasonSettings(**settings["vreason"]) if settings.get("vreason") else self.vreason,
            mode=settings.get("mode", self.mode),
            token_budget=settings.get("token_budget", self.token_budget),
            n_ctx=settings.get("n_ctx", self.n_ctx),
        )
