from tests.pipeline.toy_stages import PAR as SPEC  # noqa: F401
