"""A user's small service, as it would be written without any test in mind."""
