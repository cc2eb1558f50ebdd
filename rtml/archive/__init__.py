"""archive part of the data flow."""
