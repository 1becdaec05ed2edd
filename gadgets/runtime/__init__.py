"""Chain XML to running pipeline; server, replay and stream mode. No physics lives here."""
