"""Fixtures shared by the test modules."""

import pytest

from data_fixtures import write_bar_fashion_mnist


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    """A learnable 10-class toy set in the real Fashion-MNIST file format: class c is a bright bar at row 2c."""
    root = tmp_path_factory.mktemp("fmnist")
    write_bar_fashion_mnist(root)
    return root
