"""Health alarms, from seed 000's monitoring table, on synthetic event streams."""

from launcher.health import EVAL_RISES, PLATEAU_WINDOW, WINDOW, Health


def feed_losses(losses, health=None):
    health = health or Health()
    alarms = []
    for step, loss in enumerate(losses, 1):
        alarms += health.feed({"kind": "log", "step": step, "loss": loss})
    return alarms


def test_a_steadily_falling_loss_raises_nothing():
    assert feed_losses([3.0 * 0.97**i for i in range(60)]) == []


def test_nan_loss_alarms_once():
    alarms = feed_losses([2.0, "nan", "nan"])
    assert len(alarms) == 1 and "loss is nan at step 2" in alarms[0]


def test_rising_loss():
    alarms = feed_losses([1.0 + 0.05 * i for i in range(WINDOW)])
    assert any("rising" in a for a in alarms)


def test_oscillating_loss():
    alarms = feed_losses([1.0 if i % 2 else 2.0 for i in range(WINDOW)])
    assert any("oscillating" in a for a in alarms)


def test_plateau():
    alarms = feed_losses([2.0] * 5 + [1.0] * (PLATEAU_WINDOW + 1))
    assert any("plateau" in a for a in alarms)


def test_eval_loss_rising_names_the_best_checkpoint():
    health = Health()
    alarms = []
    for i, value in enumerate([1.5, 1.3, 1.4, 1.6, 1.8][: EVAL_RISES + 2]):
        step = (i + 1) * 10
        alarms += health.feed({"kind": "eval", "step": step, "eval_loss": value})
        alarms += health.feed({"kind": "save", "step": step, "checkpoint": f"checkpoint-{step}"})
    assert len(alarms) == 1
    assert "overfitting" in alarms[0] and "best checkpoint: checkpoint-20" in alarms[0]
