"""kfx evaluation components."""
