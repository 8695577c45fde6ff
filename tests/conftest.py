"""Fixtures shared by the test modules."""

import shutil

import pytest

from data_fixtures import write_bar_fashion_mnist


@pytest.fixture(scope="module", autouse=True)
def module_temp_dirs_go_with_the_module(request, tmp_path_factory):
    """Delete the folders a module's fixtures made with ``tmp_path_factory`` once the module is done.

    pytest keeps them until the session ends, and the training fixtures hold AlexNet checkpoints
    of 0.2-0.9 GB each: kept across the whole run they fill a small CI disk. A module with a
    failure keeps its folders for a look (pyproject's tmp_path_retention_policy does the same for
    ``tmp_path``). No fixture here is session-scoped, so nothing made here outlives its module.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed == failed_before:
        for path in set(base.iterdir()) - before:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    """A learnable 10-class toy set in the real Fashion-MNIST file format: class c is a bright bar at row 2c."""
    root = tmp_path_factory.mktemp("fmnist")
    write_bar_fashion_mnist(root)
    return root
