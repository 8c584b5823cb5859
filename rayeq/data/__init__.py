"""Data: the stored format (schema), the built-in set; making data sets (make/) and feeding training (feed/)."""
