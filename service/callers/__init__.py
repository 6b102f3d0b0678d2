"""Who is asking: each module turns a presented credential into a ``Caller`` or refuses."""
