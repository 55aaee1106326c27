import pytest

# Shared test code with assertions of its own, imported by test modules before
# pytest would load it as a plugin: rewrite its asserts for readable failures.
pytest.register_assert_rewrite("tests.cluster", "tests.storage_contract", "tests.redis_cluster")
