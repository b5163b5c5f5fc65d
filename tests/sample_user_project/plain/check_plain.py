"""A user suite that does not opt in: the plugin must not be there."""

from __future__ import annotations

import sys


def test_the_plugin_is_not_loaded(request):
    assert not request.config.pluginmanager.has_plugin("dispytch_pytest")
    assert "dispytch_pytest" not in sys.modules
    assert "dispytch" not in sys.modules
    assert request.config.getoption("dispytch_conformance", default="absent") == "absent"
