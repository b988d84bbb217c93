"""What one chat runs with: model, frame sampling, generation, engine and V-Reason settings, and the mode.

The chat takes the same options as `vreason run` (parsed by the same click decorators and turned into
settings by the same `cli.settings_from_options`); this module holds them as one value the app can change
(settings screen, video panel) and store with each session, so a resumed session encodes the video the
same way and its follow-ups continue the stored conversation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine import EngineSettings, GenerationSettings
from ..events import Mode
from ..registry import DEFAULT_MODEL
from ..sampling import TokenSampling
from ..video import FrameSampling

if TYPE_CHECKING:
    from ..vreason import VReasonSettings


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
    def from_cli(cls, video: Path | None, o: dict) -> ChatOptions:
        """From `vreason chat`'s parsed options (those of `vreason run`); `--mode` is the starting mode."""
        from ..cli import settings_from_options

        gen, frames, eng, vr = settings_from_options({**o, "mode": "vreason"})  # V-Reason settings and the hook always
        return cls(
            model=o["model"] or DEFAULT_MODEL,
            mmproj=o["mmproj"],
            video=video,
            frames=frames,
            gen=gen,
            engine=eng,
            vreason=vr,
            mode=o["mode"],
            token_budget=o["token_budget"],
            n_ctx=o["ctx"],
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
        from ..vreason import VReasonSettings

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
