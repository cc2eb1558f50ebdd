"""aggregate part of the data flow."""
