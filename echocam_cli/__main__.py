from echocam_cli import entry

entry()
