from tests.pipeline.toy_stages import A as SPEC  # noqa: F401
