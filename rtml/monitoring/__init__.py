"""monitoring part of the data flow."""
