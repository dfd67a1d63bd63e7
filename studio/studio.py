"""The Studio: settings, the one model manager and the presets, created once in app.py and handed to every tab."""
from __future__ import annotations

import sys
import threading

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

    def warm_up(self) -> threading.Thread | None:
        """Load the default model in the background (with the engines cached for it on this machine), as other
        studios load theirs at start: the first click then runs at full speed. A failure here is only printed;
        the first job that needs the model reports it."""
        spec = self.default_model()
        if spec is None:
            return None

        def load():
            try:
                model = self.manager.get(spec)
                if model.engines is not None:
                    model.engines.preload()
            except Exception as e:  # noqa: BLE001
                print(f"note: could not load {spec} at start: {e}", file=sys.stderr)

        thread = threading.Thread(target=load, name="warm-up", daemon=True)
        thread.start()
        return thread
