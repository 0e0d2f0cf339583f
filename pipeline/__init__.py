"""kfx pipeline core: config, stage graph, artifact/metadata store, local runner, CLI."""

__version__ = "0.1.0"
