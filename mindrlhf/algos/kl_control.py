"""KL coefficient controllers: plain Python numbers in and out, updated between compiled steps.

Two different β's live in RLHF-PPO:
- the reward's KL coefficient (r_t = score − β·KL(π ‖ π_ref)), held fixed or steered toward a target
  KL by ``AdaptiveKLController`` (Ziegler et al. 2019);
- PPO's own penalty coefficient for the "kl_penalty" policy loss, doubled or halved after each
  update by ``adapt_kl_penalty`` (Schulman et al. 2017, section 4).
"""


class FixedKLController:
    """β stays at ``kl_coef``; ``update`` exists so trainers treat both controllers alike."""

    def __init__(self, kl_coef):
        self.kl_coef = float(kl_coef)

    def update(self, current_kl, n_steps):
        """No change; returns β."""
        return self.kl_coef


class AdaptiveKLController:
    """Proportional controller of β toward a target KL (Ziegler et al. 2019, section 2.2).

    e     = clip(KL_current / KL_target − 1, −0.2, 0.2)
    β    ← β · (1 + e · n_steps / horizon)

    KL above target raises β (pulls π back toward π_ref), below target lowers it; the clip bounds a
    single update to ±20 % of the horizon-scaled step.
    """

    ERROR_CLIP = 0.2

    def __init__(self, init_kl_coef, target, horizon):
        if target <= 0 or horizon <= 0:
            raise ValueError(
                f"AdaptiveKLController: target ({target}) and horizon ({horizon}) must both be > 0; "
                f"for a constant coefficient use FixedKLController"
            )
        self.kl_coef = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl, n_steps):
        """Move β given the KL measured over the last ``n_steps`` samples (or steps); returns β."""
        error = min(max(float(current_kl) / self.target - 1.0, -self.ERROR_CLIP), self.ERROR_CLIP)
        self.kl_coef *= 1.0 + error * n_steps / self.horizon
        return self.kl_coef


def adapt_kl_penalty(beta, measured_kl, target):
    """PPO's adaptive KL penalty rule (Schulman et al. 2017, section 4), applied after each update:

    β · 2   if d > 1.5 · d_targ
    β / 2   if d < d_targ / 1.5
    β       otherwise                    (d = measured KL(π_old ‖ π), d_targ = target)
    """
    if measured_kl > 1.5 * target:
        return beta * 2.0
    if measured_kl < target / 1.5:
        return beta / 2.0
    return beta
