"""The run's configuration: the typed schema (``schema``), TOML reading, writing and typed
edits (``io``), and the named presets (``presets``). Imports nothing above ``errors``."""
