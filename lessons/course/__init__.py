"""The course's own examples, as the course writes them, so that the lessons can run them for
real before showing the same idea in taskshuttle. Each runs as a program of its own
(``python -m lessons.course.<name>``): what it prints is what a student of the course sees.

The only changes are the ones a lesson needs to finish in seconds, each marked ``# lesson:``.
"""
