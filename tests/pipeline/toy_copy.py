from tests.pipeline.toy_stages import COPY as SPEC  # noqa: F401
