"""kfx transform components."""
