"""`rayeq study`: methods x seeds x settings under one protocol, evaluated and summarised."""
