"""Evaluation backends; every backend writes the same tidy score rows."""
