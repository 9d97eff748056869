"""The producer: sends tasks, and with the local backend runs the workers too."""
