"""`rsnjax._validation.raised_by_rsnjax`: only a `raise` that creates the error inside rsnjax
counts as rsnjax's own (bad input, exit 2 in the CLI); an error merely passed on is a bug."""

import linecache
from pathlib import Path

import pytest

import rsnjax
from rsnjax._validation import raised_by_rsnjax

SOURCE = '''\
def own(value):
    raise ValueError(f"`x` must be positive, got {value}")


def own_class(value):
    raise TypeError


def passed_on(err):
    raise err


def reraised(err):
    try:
        raise err
    except ValueError:
        raise


def foreign_call():
    return int("not a number")
'''


@pytest.fixture(scope="module")
def fake_module():
    """Functions compiled as if they were a file inside the rsnjax package."""
    filename = str(Path(rsnjax.__file__).parent / "_fake_for_test_error_origin.py")
    linecache.cache[filename] = (len(SOURCE), None, SOURCE.splitlines(True), filename)
    namespace = {}
    exec(compile(SOURCE, filename, "exec"), namespace)
    yield namespace
    linecache.cache.pop(filename, None)


def _caught(fn, *args):
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args)
    return info.value


def test_only_errors_created_by_rsnjax_count_as_its_own(fake_module):
    assert raised_by_rsnjax(_caught(fake_module["own"], -1))
    assert raised_by_rsnjax(_caught(fake_module["own_class"], -1))
    foreign = ValueError("made by another library")  # an exception object rsnjax did not create
    assert not raised_by_rsnjax(_caught(fake_module["passed_on"], foreign))
    assert not raised_by_rsnjax(_caught(fake_module["reraised"], ValueError("made elsewhere")))
    assert not raised_by_rsnjax(_caught(fake_module["foreign_call"]))
    assert not raised_by_rsnjax(ValueError("never raised"))
