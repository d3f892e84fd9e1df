"""Settings the unlearning methods share. Each method module declares its own `Settings` dataclass
(a subclass of one of these, or of `utils.config.MethodConfig`) holding only the knobs it reads; a
config's `method` section is parsed into it, so a knob of another method is refused at load time.

Range bounds are declared per class in `utils.config.BOUNDS`; `check_ranges` applies those of the
class and of all its bases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from utils.config import BOUNDS, NON_NEGATIVE, POSITIVE, Bound, MethodConfig


@dataclass
class ForgetTermSettings(MethodConfig):
    """The knobs of the forget term every unlearning method has."""

    npo_beta: float = 0.1  # NPO's beta (read when the forget loss is npo)
    # SimNPO's beta and margin gamma (OpenUnlearning's TOFU values; its delta is gamma / beta).
    simnpo_beta: float = 4.5
    simnpo_gamma: float = 0.0
    wga_beta: float = 1.0  # WGA's exponent on the token probability weight (0: plain gradient ascent)
    undial_beta: float = 10.0  # UNDIAL's drop of the true token's reference logit
    # Stop ascending an example once its mean token NLL passes this level (None: no ceiling).
    # "gold_standard": the gold standard's mean forget-answer NLL from <workdir>/prepare_report.json.
    forget_loss_ceiling: float | Literal["gold_standard"] | None = None
    # What the ceiling is a level of. "answer": the example's mean NLL over its answer tokens.
    # "document": the mean NLL over its whole text (prompt + answer), the quantity the MIA loss attack
    # reads; ascent still acts on the answer only. "gold_standard" then means the gold standard's mean
    # whole-text NLL on the forget items.
    forget_loss_ceiling_scope: Literal["answer", "document"] = "answer"


@dataclass
class UnlearningSettings(ForgetTermSettings):
    """A forget term whose loss is a choice: gradient ascent (-NLL), NPO, SimNPO, WGA or UNDIAL."""

    forget_loss: Literal["ascent", "npo", "simnpo", "wga", "undial"] = "ascent"


BOUNDS[ForgetTermSettings] = {"npo_beta": POSITIVE, "simnpo_beta": POSITIVE, "simnpo_gamma": NON_NEGATIVE,
                              "wga_beta": NON_NEGATIVE, "undial_beta": POSITIVE,
                              "forget_loss_ceiling": Bound(low=0, low_open=True, nullable=True)}


@dataclass
class FixedForgetLossSettings(ForgetTermSettings):
    """A method whose forget loss is fixed (NPO, SimNPO, WGA, UNDIAL), with an optional retain term."""

    retain_loss: Literal["nll", "kl", "none"] = "nll"
    retain_weight: float = 1.0  # the retain term's weight against the forget term's


BOUNDS[FixedForgetLossSettings] = {"retain_weight": NON_NEGATIVE}
