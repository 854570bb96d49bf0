"""Amazon Connect contact events on the call-center touch point (see docs/callcenter.md)."""
