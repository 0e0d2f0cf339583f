"""kfx training components."""
