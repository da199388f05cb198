"""Protocol emulators for stores that cannot be installed on a test machine."""
