"""The summary tables, gain retention with its intervals, and the plots."""
