"""kfx deploy components."""
