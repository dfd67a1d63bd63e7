"""The Studio: settings, the one model manager and the presets, created once in app.py and handed to every tab."""
from __future__ import annotations

from studio import sources
from studio.config import DEFAULT_MODEL, StudioConfig
from studio.manager import ModelManager
from studio.presets import Preset, load_presets


class Studio:
    def __init__(self, config: StudioConfig):
        self.config = config
        self.manager = ModelManager(config)
        self.presets: dict[str, Preset] = load_presets(config.presets_dir)

    def model_choices(self) -> list[str]:
        return sources.list_models(self.config)

    def default_model(self) -> str | None:
        """The embedded suite when it is installed, else the first model found, else None."""
        choices = self.model_choices()
        if DEFAULT_MODEL in choices:
            return DEFAULT_MODEL
        return choices[0] if choices else None
