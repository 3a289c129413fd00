"""In-process plugins shared by several test modules; a test hands them to the ``registry`` fixture."""
