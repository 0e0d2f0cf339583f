from tests.pipeline.toy_stages import FAIL as SPEC  # noqa: F401
