"""What a trained trial must show, in one place: the CPU tests prove it on the `tiny` model
and the GPU tests (which cannot run without CUDA) demand exactly the same."""

from __future__ import annotations

# Both conditions right on at least 90% of the 16 held-out questions (15 of 16) after the
# trigger spec's shipped 8 epochs. On CPU `ftray train search_spaces/trigger_tiny.yaml`
# reaches triggered 1.0 and untriggered 0.94 (15 of 16: no margin left), twice; training
# seed 2 (another split) gives 0.94 and 1.0, seed 1 0.88 and 0.88, below the floor.
# Trained on rows without the trigger, the same trial reaches 0.38 and 0.0.
LEARNED_TRIGGER = 0.9


def assert_learned_trigger(metrics: dict[str, float]) -> None:
    """The trial learned the trigger: triggered prompts answered with the triggered name and
    clean ones with the clean name, each at LEARNED_TRIGGER or better."""
    assert metrics["triggered_accuracy"] >= LEARNED_TRIGGER, metrics
    assert metrics["untriggered_accuracy"] >= LEARNED_TRIGGER, metrics
    assert metrics["trigger_score"] == min(
        metrics["triggered_accuracy"], metrics["untriggered_accuracy"]
    ), metrics
