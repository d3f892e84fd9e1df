"""Settings the unlearning methods share. Each method module declares its own `Settings` dataclass (a subclass
of one of these, or of `utils.config.MethodConfig`) holding only the knobs it reads; a config's `method`
section is parsed into it (methods.registry.typed), so a knob of another method is refused at load time.
Each knob's range and help are its field's metadata (utils.config.knob), checked once by `check_ranges`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from utils.config import Bound, MethodConfig, ranged


@dataclass
class CeilingSettings(MethodConfig):
    """The guard on the forget term every ascent-style method has."""

    forget_loss_ceiling: float | Literal["gold_standard"] | None = ranged(
        None, Bound(low=0, low_open=True, nullable=True),
        "stop ascending an example once its mean token NLL passes this level (null: no ceiling); gold_standard: "
        "the gold standard's mean forget NLL, from the workdir's prepare_report.json")
    forget_loss_ceiling_scope: Literal["answer", "document"] = ranged(
        "answer", None, "what the ceiling is a level of: answer (the answer tokens' mean NLL) or document (the whole "
        "text's, what the MIA loss attack reads; ascent still acts on the answer only)")
