"""kfx data components."""
