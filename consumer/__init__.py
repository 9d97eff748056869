"""The consumer: worker processes, their supervisor, and the task handlers they run."""
