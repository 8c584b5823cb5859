"""What `rayeq sweep` and `rayeq study` both stand on: their spec files' shared parts (`spec.py`) and the start of a
campaign of Tune trials over the train path (`run.py`)."""
