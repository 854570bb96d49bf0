"""Every first-party touch point passes the conformance suite it offers plugin authors."""

from __future__ import annotations

from prm_core.testing.conformance import TouchPointConformance


class TestWeb(TouchPointConformance):
    touchpoint = "web"


class TestCallCenter(TouchPointConformance):
    touchpoint = "callcenter"


class TestIvr(TouchPointConformance):
    touchpoint = "ivr"


class TestPos(TouchPointConformance):
    touchpoint = "pos"
